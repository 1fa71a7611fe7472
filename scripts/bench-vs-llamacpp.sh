#!/usr/bin/env bash
# hearth against llama.cpp's llama-server on the same GGUF file, the same threads, in one run,
# both driven by `hearth bench` (OpenAI-compatible HTTP; hearth also over gRPC). The two servers
# alternate within each round; rounds repeat so the spread shows (these machines are noisy).
#
#   bash scripts/bench-vs-llamacpp.sh            # everything (≈ 20–40 min on 2 cores)
#   ROUNDS=1 CONCURRENCY=1,4,16 bash scripts/bench-vs-llamacpp.sh
#
# Settings (environment): ROUNDS (2), CONCURRENCY (1,4,16,32), INPUT_LEN (128), OUTPUT_LEN (128),
# REQUESTS_PER_CLIENT (2; at least 8 requests per level), THREADS (all cores), PREFIX_LEN (1024),
# LONG_LEN (2000: the long prompt of the mixed run at concurrency 16; MIX=0 skips that run),
# LLAMA_SERVER (a built llama-server to use instead of building one), OUT (bench-results/<time>).
#
# llama-server is built by scripts/build-llamacpp.sh (llama.cpp from the llama-cpp-python sdist,
# native CPU features minus AMX). Results: $OUT/*.json, $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
CONCURRENCY="${CONCURRENCY:-1,4,16,32}"
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-128}"
REQUESTS_PER_CLIENT="${REQUESTS_PER_CLIENT:-2}"
THREADS="${THREADS:-$(nproc)}"
PREFIX_LEN="${PREFIX_LEN:-1024}"
OUT="${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

cargo build --release -q -p hearth-cli
HEARTH=./target/release/hearth
$HEARTH models pull gemma3-270m >/dev/null
MODEL_DIR="${HEARTH_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/models}"
GGUF="$MODEL_DIR/gemma3-270m/gemma-3-270m-q4_k_m.gguf"

if [ -z "${LLAMA_SERVER:-}" ]; then
    LLAMA_SERVER="$(bash scripts/build-llamacpp.sh llama-server)/llama-server"
fi

HTTP_PORT=18080
GRPC_PORT=18051
PID=""
stop_server() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        # Peak resident memory, then a clean stop.
        awk '/VmHWM/ {printf "%d\n", $2 * 1024}' "/proc/$PID/status" >"$OUT/$1.rss"
        kill -TERM "$PID"
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}
trap 'stop_server interrupted' EXIT

wait_ready() {
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null 2>&1 && \
           curl -sf "http://127.0.0.1:$HTTP_PORT/v1/models" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "server did not start" >&2
    return 1
}

# Requests per load level: REQUESTS_PER_CLIENT per client, at least 8.
max_conc=$(echo "$CONCURRENCY" | tr ',' '\n' | sort -n | tail -1)
bench() { # name api addr extra...
    local name=$1 api=$2 addr=$3
    shift 3
    for c in ${CONCURRENCY//,/ }; do
        local n=$(( c * REQUESTS_PER_CLIENT )); [ "$n" -lt 8 ] && n=8
        $HEARTH bench --api "$api" --addr "$addr" --concurrency "$c" --requests "$n" \
            --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --no-progress --json "$OUT/$name-c$c.json" "$@" \
            | tail -n +2 | head -1
    done
}
prefix() { # name api addr: cold (unique prompts) then warm (shared prefix) TTFT
    local name=$1 api=$2 addr=$3
    $HEARTH bench --api "$api" --addr "$addr" --concurrency 1 --requests 8 --input-len $((PREFIX_LEN + 64)) \
        --output-len 16 --no-progress --json "$OUT/$name-prefix-cold.json" | tail -n +2 | head -1
    $HEARTH bench --api "$api" --addr "$addr" --concurrency 1 --requests 8 --workload shared-prefix \
        --prefix-len "$PREFIX_LEN" --input-len 64 --output-len 16 --no-progress --json "$OUT/$name-prefix-warm.json" | tail -n +2 | head -1
}

LONG_LEN="${LONG_LEN:-2000}"
mix() { # name api addr: concurrency 16 with one LONG_LEN-token prompt among the requests
    local name=$1 api=$2 addr=$3
    $HEARTH bench --api "$api" --addr "$addr" --concurrency 16 --requests 48 --input-len "$INPUT_LEN" \
        --output-len "$OUTPUT_LEN" --mix-long "$LONG_LEN" --no-progress --json "$OUT/$name-mix.json" | tail -n +2 | head -1
}

SLOTS=$max_conc
# Every slot must fit the longest request (llama-server splits its context evenly over slots).
per_slot=$(( INPUT_LEN + OUTPUT_LEN )); for x in $(( PREFIX_LEN + 64 + 16 )) $(( LONG_LEN + OUTPUT_LEN )); do
    [ "$x" -gt "$per_slot" ] && per_slot=$x; done
CTX=$(( SLOTS * (per_slot + 64) ))
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round: llama-server (-np $SLOTS -t $THREADS)"
    "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port $HTTP_PORT -t "$THREADS" -np "$SLOTS" -c "$CTX" \
        --no-webui >"$OUT/llama-server-r$round.log" 2>&1 &
    PID=$!
    wait_ready
    bench "llama-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    prefix "llama-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    [ "${MIX:-1}" = 1 ] && mix "llama-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    stop_server "llama-r$round"

    echo "== round $round: hearth serve"
    RAYON_NUM_THREADS="$THREADS" $HEARTH serve --listen "127.0.0.1:$GRPC_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --max-num-seqs "$SLOTS" --kv-cache-memory "$(( CTX * 18 * 256 * 2 * 2 / 1048576 + 1 ))MiB" \
        >"$OUT/hearth-r$round.log" 2>&1 &
    PID=$!
    wait_ready
    bench "hearth-http-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    # Other prompts than the HTTP run's: the same ones would hit hearth's prefix cache.
    bench "hearth-grpc-r$round" grpc "http://127.0.0.1:$GRPC_PORT" --seed 7
    prefix "hearth-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    [ "${MIX:-1}" = 1 ] && mix "hearth-r$round" openai "http://127.0.0.1:$HTTP_PORT"
    stop_server "hearth-r$round"
done
trap - EXIT

python3 - "$OUT" "$CONCURRENCY" "$ROUNDS" <<'PY'
import json, sys, statistics, os
out, conc, rounds = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3])
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p))["runs"][0]["summary"] if os.path.exists(p) else None
def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return "n/a"
    m = statistics.median(xs)
    return f"{m:.3g}" if len(xs) == 1 else f"{m:.3g} ({min(xs):.3g}–{max(xs):.3g})"
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
rows = ["| conc | metric | llama-server | hearth HTTP | hearth gRPC | hearth HTTP / llama |", "|---|---|---|---|---|---|"]
metrics = [("output tok/s", lambda s: s["output_throughput"]), ("TTFT p50 s", lambda s: s["ttft"]["p50"]),
           ("TTFT p99 s", lambda s: s["ttft"]["p99"]), ("ITL p50 s", lambda s: s["itl"]["p50"]),
           ("ITL p99 s", lambda s: s["itl"]["p99"])]
for c in conc:
    for label, f in metrics:
        vals = {k: [f(s) if s else None for s in (load(f"{k}-r{r}-c{c}") for r in range(1, rounds + 1))]
                for k in ("llama", "hearth-http", "hearth-grpc")}
        l, h = med(vals["llama"]), med(vals["hearth-http"])
        ratio = f"{h / l:.2f}" if l and h else "n/a"
        rows.append(f"| {c} | {label} | {spread(vals['llama'])} | {spread(vals['hearth-http'])} | {spread(vals['hearth-grpc'])} | {ratio} |")
for k in ("llama", "hearth"):
    cold = med([(load(f"{k}-r{r}-prefix-cold") or {}).get("ttft", {}).get("p50") for r in range(1, rounds + 1)])
    warm = med([(load(f"{k}-r{r}-prefix-warm") or {}).get("ttft", {}).get("p50") for r in range(1, rounds + 1)])
    if cold and warm:
        rows.append(f"| 1 | shared prefix: TTFT p50 warm/cold ({k}) | | | | {warm / cold:.2f} ({warm:.3f} s / {cold:.3f} s) |")
for k in ("llama", "hearth"):
    p99 = med([(load(f"{k}-r{r}-mix") or {}).get("ttft", {}).get("p99") for r in range(1, rounds + 1)])
    if p99:
        rows.append(f"| 16 | TTFT p99 with one long prompt ({k}) | | | | {p99:.3f} s |")
for k in ("llama", "hearth"):
    rss = [float(open(os.path.join(out, f"{k}-r{r}.rss")).read()) for r in range(1, rounds + 1) if os.path.exists(os.path.join(out, f"{k}-r{r}.rss"))]
    if rss:
        rows.append(f"| | peak RSS ({k}) | | | | {max(rss) / 2**20:.0f} MiB |")
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
