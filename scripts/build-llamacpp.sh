#!/usr/bin/env bash
# Builds llama.cpp tools (the benchmark peer) from the source vendored in the llama-cpp-python
# sdist: pip downloads the sdist, cmake and ninja come from pip too. Native CPU features minus AMX
# (a plain native build crashes on these machines' AMX tiles). Prints the directory of the built
# binaries on stdout; builds only the targets that are missing.
#
#   bash scripts/build-llamacpp.sh llama-server llama-bench llama-batched-bench
set -euo pipefail
LLAMA_CPP_PYTHON="0.3.36"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/hearth/llama.cpp"
THREADS="${THREADS:-$(nproc)}"
BIN="$CACHE/build/bin"
missing=()
for t in "$@"; do
    [ -x "$BIN/$t" ] || missing+=("$t")
done
if [ "${#missing[@]}" -gt 0 ]; then
    mkdir -p "$CACHE"
    tools() { PATH="$CACHE/tools/bin:$PATH" PYTHONPATH="$CACHE/tools" "$@"; }
    if [ ! -x "$CACHE/tools/bin/cmake" ]; then
        python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/tools" cmake ninja >&2
    fi
    SRC="$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
    if [ ! -d "$SRC" ]; then
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
            -d "$CACHE" "llama-cpp-python==$LLAMA_CPP_PYTHON" >&2
        tar -xzf "$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$CACHE"
    fi
    tools cmake -S "$SRC" -B "$CACHE/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
        -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON >&2
    tools cmake --build "$CACHE/build" --target "${missing[@]}" -j "$THREADS" >&2
fi
echo "$BIN"
