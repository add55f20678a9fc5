"""vLLM's in-process engine for batch jobs on a GPU machine (optional extra `aape[vllm]`)."""

from __future__ import annotations

import threading

from prompt_banks.backends.base import CompletionRequest, LLMBackend, parse_answer
from prompt_banks.errors import UserError
from prompt_banks.spec import LLMSettings


class VLLMOfflineBackend(LLMBackend):
    """One `vllm.LLM`; each request asks for its n samples in one call (vLLM batches them).
    The engine is not thread-safe, so calls take turns; use the openai backend against
    `vllm serve` for many requests in flight."""

    def __init__(self, settings: LLMSettings) -> None:
        try:
            import vllm
        except ImportError:
            raise UserError(
                "llm.backend: 'vllm' needs vLLM on a GPU machine; pip install 'aape[vllm]', "
                "or use --backend openai against a vLLM server"
            ) from None
        model = settings.model_path or settings.model
        if not model:
            raise UserError("--model: the vllm backend needs a model name or --model-path")
        self._vllm = vllm
        self.model_id = settings.model or model
        self.max_n = settings.samples_per_request
        self.key_params = {"endpoint": "chat"}
        self._llm = vllm.LLM(model=model)
        self._lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> list[str]:
        params = self._vllm.SamplingParams(
            n=request.n,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            stop=list(request.stop) or None,
            seed=request.seed,
        )
        messages = [{"role": "user", "content": request.user}]
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        with self._lock:
            out = self._llm.chat(messages, params, use_tqdm=False)
        return [parse_answer(o.text) for o in out[0].outputs]
