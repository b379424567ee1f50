#!/usr/bin/env bash
# llama-cpp-python has no wheel on PyPI: build one from its sdist, once per machine, and install it.
#
# Built for AVX2 (no -march=native): a native build on a CPU with AMX (Intel Sapphire Rapids and later, as some
# of these machines are) segfaults at the first evaluation of a quantised GGUF when the virtual machine does
# not grant AMX tile state; and a native build is tied to the CPU it was made on, while pip's wheel cache would
# hand it to any machine. The wheel is kept in $LLAMA_WHEELS, so later set-ups on the machine reuse it.
set -euo pipefail
BIN=${BIN:-.venv/bin}
VERSION=0.3.36
LLAMA_WHEELS=${LLAMA_WHEELS:-$HOME/.cache/alignkit/wheels/llama-cpp-python-$VERSION-avx2}
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
wheel=$(ls "$LLAMA_WHEELS"/llama_cpp_python-$VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION for AVX2 (about 5 minutes, once per machine) into $LLAMA_WHEELS"
  mkdir -p "$LLAMA_WHEELS"
  CMAKE_ARGS="$FLAGS" "$BIN/pip" wheel --quiet --no-deps --no-cache-dir -w "$LLAMA_WHEELS" "llama-cpp-python==$VERSION"
  wheel=$(ls "$LLAMA_WHEELS"/llama_cpp_python-$VERSION-*.whl | head -n1)
fi
"$BIN/pip" install --quiet --no-deps --force-reinstall "$wheel"
