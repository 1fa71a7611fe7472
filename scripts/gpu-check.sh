#!/usr/bin/env bash
# Device checks of the CUDA backend, for a lent GPU machine that has no Rust toolchain and no network.
#
#   bash scripts/gpu-check.sh prepare   # here: build release executables, pack them into .dev/
#                                       # (git-ignored), split the default model into carryable chunks
#   [HEARTH_BENCH_ARGS=--profile] bash scripts/gpu-check.sh run [PHASE…]  # there: kernels (kernel-vs-CPU tests), greedy (Gemma 3
#                                       # 270M vs the CPU backend), bench (CUDA benchmark), anchor
#                                       # (PyTorch ceilings); default all; `probe` (attention alone
#                                       # + Nsight Compute) on request. Logs and JSON under $OUT
#                                       # (else .dev/out); a short table last
#
# The device takes at most 64 MiB per call, so the model travels in `.dev/model/part.*` chunks of
# 50 MiB, one per call with `.dev/bin` (ignored paths stay on the machine between calls while it is
# warm). `run` uses whatever has arrived: without every chunk it skips the Gemma checks and says so.
# Budget: about 5 minutes on an H100 for all phases (each phase stops at its own timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=.dev

prepare() {
    set -e
    mkdir -p "$DEV/bin" "$DEV/model"
    # The device's CPU is not this one: build for x86-64-v3 (AVX2), not `native` (.cargo/config.toml);
    # the CPU backend still picks AVX-512 at run time where present. A separate target folder keeps
    # the native build intact.
    export RUSTFLAGS="-C target-cpu=x86-64-v3"
    export CARGO_TARGET_DIR="${HEARTH_GPU_TARGET_DIR:-target/gpu-check}"
    local tests bench
    tests=$(cargo test --release -p hearth-backends --test cuda_ops --test cuda_gemma3 --no-run --message-format=json \
        | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("profile", {}).get("test"): print(m["target"]["name"], m["executable"])')
    bench=$(cargo bench -p hearth-benches --bench cuda --no-run --message-format=json \
        | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m["target"]["name"] == "cuda": print(m["executable"])')
    rm -rf "$DEV/stage" && mkdir -p "$DEV/stage"
    while read -r name exe; do cp "$exe" "$DEV/stage/$name"; done <<< "$tests"
    cp "$bench" "$DEV/stage/cuda_bench"
    cp ../shared/tools/gpu-anchor.py "$DEV/stage/" 2>/dev/null || echo "note: ../shared/tools/gpu-anchor.py not found; no PyTorch anchors"
    strip "$DEV"/stage/cuda_* 2>/dev/null || true
    tar -C "$DEV/stage" -cJf "$DEV/bin/hearth-gpu.tar.xz" .
    rm -rf "$DEV/stage"
    local model="${HEARTH_MODEL_DIR:-$HOME/.cache/hearth/models}/gemma3-270m/gemma-3-270m-q4_k_m.gguf"
    rm -f "$DEV"/model/part.*
    split -n 5 -d -a 2 "$model" "$DEV/model/part."
    ls "$DEV"/model/part.* | wc -l > "$DEV/model/COUNT"
    du -sh "$DEV/bin" "$DEV"/model/part.* | sed 's/^/  /'
}

has() { [ -z "$PHASES" ] || [[ " $PHASES " == *" $1 "* ]]; }

run() {
    local out="${OUT:-$DEV/out}"
    mkdir -p "$out" /tmp/hearth-gpu
    tar -C /tmp/hearth-gpu -xJf "$DEV/bin/hearth-gpu.tar.xz" || { echo "no $DEV/bin/hearth-gpu.tar.xz: run prepare here and carry $DEV/bin"; exit 1; }
    local libs
    libs=$(find /usr/local/cuda/lib64 /usr/local/cuda/targets /usr/local/nvidia /usr/lib/x86_64-linux-gnu /opt \
        \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' -o -name 'libcuda.so*' \) -not -path '*/stubs/*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
    export HEARTH_REQUIRE_GPU=1 RUST_BACKTRACE=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
    echo "library folders: $libs" >> "$out/device.txt"

    local kernels=skipped greedy=skipped
    if has kernels; then
        echo "== kernels vs CPU reference"
        timeout 180 /tmp/hearth-gpu/cuda_ops --nocapture --test-threads=1 2>&1 | tee "$out/kernels.log"
        kernels=${PIPESTATUS[0]}
    fi

    if ! has greedy; then
        :
    elif [ -f "$DEV/model/COUNT" ] && [ "$(ls "$DEV"/model/part.* 2>/dev/null | wc -l)" = "$(cat "$DEV/model/COUNT")" ]; then
        export HEARTH_MODEL_DIR=/tmp/hearth-models
        mkdir -p "$HEARTH_MODEL_DIR/gemma3-270m"
        cat "$DEV"/model/part.* > "$HEARTH_MODEL_DIR/gemma3-270m/gemma-3-270m-q4_k_m.gguf"
        echo "== greedy Gemma 3 270M, CUDA vs CPU"
        timeout 240 /tmp/hearth-gpu/cuda_gemma3 --nocapture --test-threads=1 2>&1 | tee "$out/greedy.log"
        greedy=${PIPESTATUS[0]}
    else
        echo "== greedy Gemma 3 270M: skipped, the model's chunks have not all arrived in $DEV/model"
    fi

    local gemma=""
    [ "$greedy" = 0 ] && gemma=--gemma
    if has bench; then
        echo "== benchmark"
        timeout 300 /tmp/hearth-gpu/cuda_bench --config models/llama-3.1-8b.json $gemma ${HEARTH_BENCH_ARGS:-} --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
    elif [ -n "$gemma" ]; then
        echo "== benchmark (Gemma 3 270M only)"
        timeout 120 /tmp/hearth-gpu/cuda_bench --skip-llama --gemma --json "$out/bench-gemma.json" 2>&1 | tee "$out/bench.log"
    fi
    if [[ " $PHASES " == *" probe "* ]]; then
        # Not in the default set: the attention op alone, then Nsight Compute on its decode-b64 and
        # prefill launches (the probe runs 23 launches per case: 3 warm-ups, 20 timed).
        echo "== attention probe"
        timeout 120 /tmp/hearth-gpu/cuda_bench --attention-probe 2>&1 | tee "$out/probe.log"
        if command -v ncu > /dev/null; then
            for skip in 23 69; do
                timeout 150 ncu --kernel-name regex:attention_f32 --launch-skip $skip --launch-count 1 \
                    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                    --section MemoryWorkloadAnalysis /tmp/hearth-gpu/cuda_bench --attention-probe > "$out/ncu-$skip.txt" 2>&1
                grep -E 'Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Compute \(SM\)|L1/TEX Hit|L2 Hit|Grid Size' "$out/ncu-$skip.txt" | head -40
            done
        fi
    fi
    if has anchor && [ -f /tmp/hearth-gpu/gpu-anchor.py ]; then
        echo "== PyTorch anchors"
        timeout 180 python3 /tmp/hearth-gpu/gpu-anchor.py --out "$out/anchor.json" 2>&1 | tee "$out/anchor.log"
    fi

    echo
    echo "== summary"
    cat "$out/device.txt"
    echo "kernel tests: exit $kernels; $(grep -c 'max relative error' "$out/kernels.log" 2>/dev/null) comparisons; $(grep -E '^test result' "$out/kernels.log" 2>/dev/null)"
    echo "greedy vs CPU: exit $greedy; $(grep -h '^greedy:' "$out/greedy.log" 2>/dev/null)"
    grep -E '^(decode|prefill|engine|gemma3|device|model)' "$out/bench.log" 2>/dev/null
    [ -f "$out/anchor.log" ] && tail -n 4 "$out/anchor.log"
}

PHASES="${*:2}"
case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
