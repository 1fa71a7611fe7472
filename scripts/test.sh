#!/usr/bin/env bash
# The whole test suite. Fetches the default model into the local store first if it is missing
# (the tests themselves never download anything), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p hearth-cli -- models pull gemma3-270m
cargo test --workspace "$@"
