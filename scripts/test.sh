#!/usr/bin/env bash
# The whole test suite. Fetches the default model into the local store first if it is missing
# (the tests themselves never download anything), installs CUDA's runtime compiler (NVRTC) from its
# wheels so every kernel in kernels/ is compiled to PTX for sm_80 and sm_90 (no GPU needed), then
# runs every test of the workspace. Tests that need a GPU say so and skip where there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p hearth-cli -- models pull gemma3-270m

CUDA_WHEELS="${HEARTH_CUDA_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/cuda-13.0}"
if [ ! -f "$CUDA_WHEELS/.complete" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$CUDA_WHEELS" \
        'nvidia-cuda-nvrtc==13.0.*' 'nvidia-cuda-runtime==13.0.*'
    touch "$CUDA_WHEELS/.complete"
fi
export LD_LIBRARY_PATH="$CUDA_WHEELS/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HEARTH_REQUIRE_NVRTC=1

cargo test --workspace "$@"
