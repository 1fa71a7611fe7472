#!/usr/bin/env bash
# Set up and run hearth on the default model: build, fetch and verify Gemma 3 270M, generate.
# (The gRPC server comes with the serving API; until then this streams one generation.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hearth-cli
./target/release/hearth models pull gemma3-270m
exec ./target/release/hearth generate --max-tokens 64 \
  --prompt "${HEARTH_PROMPT:-Photosynthesis is the process by which}" "$@"
