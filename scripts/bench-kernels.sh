#!/usr/bin/env bash
# One forward step of hearth's CPU backend against llama.cpp on the same GGUF file and threads, in
# one run: decode at batch 1, 8, 16, 32 (aggregate tokens/s of the step, sequences holding 128
# cached tokens) and prefill of 128 and 512 tokens. Rounds alternate llama.cpp and hearth, so the
# spread shows (these machines are noisy). The issue "CPU kernels" states its targets as ratios.
#
#   bash scripts/bench-kernels.sh            # ROUNDS=2 (≈ 12 min on 2 cores)
#
# llama.cpp: `llama-bench -p 128,512 -n 128 -r 3` (pp, tg) and `llama-batched-bench -npp 128
# -ntg 32 -npl 1,8,16,32` (aggregate decode with 128–160 cached tokens), built by
# scripts/build-llamacpp.sh without AMX. hearth: `cargo bench -p hearth-benches --bench forward`
# (criterion medians). Results: $OUT/round-*/, $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
THREADS="${THREADS:-$(nproc)}"
OUT="${OUT:-bench-results/kernels-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

cargo build --release -q -p hearth-cli
./target/release/hearth models pull gemma3-270m >/dev/null
MODEL_DIR="${HEARTH_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/models}"
GGUF="$MODEL_DIR/gemma3-270m/gemma-3-270m-q4_k_m.gguf"
BIN="$(bash scripts/build-llamacpp.sh llama-bench llama-batched-bench)"
cargo bench -q -p hearth-benches --bench forward --no-run

for r in $(seq 1 "$ROUNDS"); do
    D="$OUT/round-$r"
    mkdir -p "$D"
    echo "== round $r: llama.cpp" >&2
    "$BIN/llama-bench" -m "$GGUF" -t "$THREADS" -p 128,512 -n 128 -r 3 -o json >"$D/llama-bench.json" 2>"$D/llama-bench.log"
    "$BIN/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c 8192 -b 2048 -ub 512 -npp 128 -ntg 32 \
        -npl 1,8,16,32 >"$D/llama-batched-bench.md" 2>"$D/llama-batched-bench.log"
    echo "== round $r: hearth" >&2
    rm -rf target/criterion/decode_step target/criterion/prefill_step
    cargo bench -q -p hearth-benches --bench forward >"$D/hearth-forward.log" 2>&1
    mkdir -p "$D/criterion"
    cp -r target/criterion/decode_step target/criterion/prefill_step "$D/criterion/"
done

python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/summary.md"
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def median_ns(d, group, name):
    with open(f"{d}/criterion/{group}/{name}/new/estimates.json") as f:
        return json.load(f)["median"]["point_estimate"]

rows = {}  # case -> ([hearth tok/s per round], [llama tok/s per round], llama source)
def add(case, h, l, src):
    e = rows.setdefault(case, ([], [], src))
    e[0].append(h)
    e[1].append(l)

for r in range(1, rounds + 1):
    d = f"{out}/round-{r}"
    lb = json.load(open(f"{d}/llama-bench.json"))
    pp = {t["n_prompt"]: t["avg_ts"] for t in lb if t["n_gen"] == 0}
    tg = next(t["avg_ts"] for t in lb if t["n_prompt"] == 0)
    # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    bb = {}
    for line in open(f"{d}/llama-batched-bench.md"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            bb[int(cells[2])] = float(cells[7])
    for b in (1, 8, 16, 32):
        h = b / (median_ns(d, "decode_step", f"batch_{b}") / 1e9)
        add(f"decode, batch {b}", h, bb[b], "batched-bench S_TG")
    add("decode, batch 1 (vs tg128)", rows["decode, batch 1"][0][-1], tg, "llama-bench tg128")
    for n in (128, 512):
        h = n / (median_ns(d, "prefill_step", f"tokens_{n}") / 1e9)
        add(f"prefill {n} tokens", h, pp[n], f"llama-bench pp{n}")

targets = {"decode, batch 1": "≥ 1.0×", "decode, batch 1 (vs tg128)": "≥ 1.0×", "decode, batch 16": "≥ 1.5×",
           "decode, batch 32": "≥ 1.5×", "prefill 512 tokens": "≥ 1.0×"}
fmt = lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})" if len(v) > 1 else f"{v[0]:.1f}"
print(f"{rounds} round(s); tokens/s, median (range); ratio = median of per-round ratios\n")
print("| step | hearth | llama.cpp (no AMX) | llama source | hearth / llama.cpp | target |")
print("|---|---|---|---|---|---|")
for case, (h, l, src) in rows.items():
    ratio = statistics.median([a / b for a, b in zip(h, l)])
    print(f"| {case} | {fmt(h)} | {fmt(l)} | {src} | {ratio:.2f}× | {targets.get(case, '—')} |")
PY
