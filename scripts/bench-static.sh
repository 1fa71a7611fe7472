#!/usr/bin/env bash
# static-cpu (compiled bucket shapes, slot KV, split prefill/decode) against the dynamic CPU
# backend on the benchmark harness's standard workload (128 prompt tokens, 128 generated,
# closed loop), one server at a time, all in one run: the dynamic backend, static-cpu on NxD
# Inference's default grid, static-cpu on the tuned grid. Padding comes from each server's
# /metrics (hearth_padding_tokens_total, hearth_computed_tokens_total), counted per load level.
# Each load level draws its own prompts (--seed), so the dynamic backend's prefix cache never
# serves a prompt repeated from an earlier level (static backends have no prefix cache).
#
#   bash scripts/bench-static.sh            # results under bench-results/static-<time>/
#   CONCURRENCY=1,8 SLOTS=8 bash scripts/bench-static.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY="${CONCURRENCY:-1,4,8,16}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
REQUESTS_PER_CLIENT="${REQUESTS_PER_CLIENT:-2}"
SLOTS="${SLOTS:-8}"
MAX_LEN="${MAX_LEN:-2048}"
OUT="${OUT:-bench-results/static-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

cargo build --release -q -p hearth-cli
HEARTH=./target/release/hearth
$HEARTH models pull gemma3-270m >/dev/null

HTTP_PORT=18090
GRPC_PORT=18061
PID=""
stop_server() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID"
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}
trap stop_server EXIT

metric() { # name: the server's current value (0 when absent)
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v n="$1" '$1 == n {v = $2} END {print v + 0}'
}

run() { # name serve-flags...
    local name=$1
    shift
    $HEARTH serve --listen "127.0.0.1:$GRPC_PORT" --http-listen "127.0.0.1:$HTTP_PORT" "$@" \
        2>"$OUT/$name.log" &
    PID=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$HTTP_PORT/ready" >/dev/null 2>&1 && break
        sleep 0.2
    done
    for c in ${CONCURRENCY//,/ }; do
        local n=$((c * REQUESTS_PER_CLIENT))
        [ "$n" -lt 8 ] && n=8
        local pad0 comp0 pad1 comp1
        pad0=$(metric hearth_padding_tokens_total)
        comp0=$(metric hearth_computed_tokens_total)
        $HEARTH bench --api grpc --addr "http://127.0.0.1:$GRPC_PORT" --concurrency "$c" --requests "$n" \
            --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$c" --no-progress \
            --json "$OUT/$name-c$c.json" >/dev/null 2>&1
        pad1=$(metric hearth_padding_tokens_total)
        comp1=$(metric hearth_computed_tokens_total)
        python3 - "$OUT/$name-c$c.json" "$name" "$c" "$pad0" "$pad1" "$comp0" "$comp1" <<'EOF' | tee -a "$OUT/table.tsv"
import json, sys
path, name, c, pad0, pad1, comp0, comp1 = sys.argv[1:]
s = json.load(open(path))["runs"][0]["summary"]
pad, comp = float(pad1) - float(pad0), float(comp1) - float(comp0)
print("\t".join(str(x) for x in [
    name, c, round(s["output_throughput"], 1), round(s["ttft"]["p50"] * 1000, 1),
    round(s["itl"]["p50"] * 1000, 2), int(pad), int(comp), round(pad / comp if comp else 0, 3)]))
EOF
    done
    stop_server
}

printf "config\tconcurrency\toutput_tok_s\tttft_p50_ms\titl_p50_ms\tpadding_tokens\tcomputed_tokens\tpadding_share\n" \
    | tee "$OUT/table.tsv"
run dynamic --backend cpu
run static-nxd --backend static-cpu --static-slots "$SLOTS" --static-max-len "$MAX_LEN"
run static-tuned --backend static-cpu --static-slots "$SLOTS" --static-max-len "$MAX_LEN" --static-grid tuned
echo "results: $OUT/table.tsv"
