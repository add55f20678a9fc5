#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the project and every extra the
# tests and the demo need. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check)
# torch first and pinned: 2.14.1 + torchvision 0.29.1 load side by side (2.13.0's torchvision does not).
"${PIP[@]}" -q torch==2.14.1 torchvision==0.29.1
# llama-cpp-python builds from source (about 6 minutes on 2 cores); LLaVA is not needed.
# GGML_NATIVE=OFF: a native build on a CPU that reports AMX segfaults in ggml's AMX matmul on the
# first token (seen here, in a VM); the portable build (AVX2) runs everywhere.
# --no-cache-dir: never reuse a wheel some earlier native build left in pip's cache.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF}" \
  "${PIP[@]}" -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
"${PIP[@]}" -q -e ".[llm-local,ray,dev,vl]"
# animal-mnist's declared dependencies pull a second torch; its data needs none of them.
"${PIP[@]}" -q --no-deps animal-mnist==0.4
# Fashion-MNIST comes from Debian; optional (only its tests need it).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: dataset-fashion-mnist not installed (optional)"
fi
echo "setup: done (.venv)"
