#!/usr/bin/env bash
# Set up and run hearth on the default model: build, fetch and verify Gemma 3 270M, then serve it
# (gRPC on 127.0.0.1:50051, metrics and probes on http://127.0.0.1:8000). Extra flags go to
# `hearth serve`, e.g. `bash scripts/run.sh --listen 0.0.0.0:50051`. Ctrl-C drains and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hearth-cli
./target/release/hearth models pull gemma3-270m
exec ./target/release/hearth serve "$@"
