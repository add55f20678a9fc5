#!/usr/bin/env bash
# NOT RUN HERE: needs an NVIDIA GPU (CUDA) and the model weights (downloaded from the Hugging
# Face Hub on first start, or a local folder via MODEL=/path).
#
# Start vLLM's OpenAI-compatible server: the production LLM for prompt-bank generation.
#
#   pip install -e ".[vllm]"                       # on the GPU host, once
#   bash infra/vllm/serve.sh                       # Qwen/Qwen2.5-7B-Instruct on :8000
#   MODEL=meta-llama/Llama-3.1-8B-Instruct TP=2 bash infra/vllm/serve.sh
#
# A domain spec then points at it (llm.backend: openai, llm.base_url: http://HOST:8000/v1,
# llm.model: the MODEL below); set VLLM_API_KEY here and OPENAI_API_KEY on the client side.
# vLLM supports `response_format` JSON schema (structured output) and batches concurrent requests
# on its own: raise the domain spec's `concurrency` rather than starting several servers.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
PORT=${PORT:-8000}
HOST=${HOST:-0.0.0.0}
TP=${TP:-1}                           # tensor parallel: GPUs per model replica
MAX_LEN=${MAX_LEN:-4096}              # descriptions are short; a small context saves KV memory
GPU_MEM=${GPU_MEM:-0.90}
args=(--host "$HOST" --port "$PORT" --tensor-parallel-size "$TP" --max-model-len "$MAX_LEN"
      --gpu-memory-utilization "$GPU_MEM" --served-model-name "$MODEL")
[ -n "${VLLM_API_KEY:-}" ] && args+=(--api-key "$VLLM_API_KEY")
exec vllm serve "$MODEL" "${args[@]}"
