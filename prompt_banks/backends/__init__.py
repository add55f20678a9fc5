"""LLM backends behind one interface, chosen by name from an explicit registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prompt_banks.backends.base import (
    CompletionRequest,
    FatalLLMError,
    LLMBackend,
    LLMError,
    TransientLLMError,
)
from prompt_banks.errors import UserError
from prompt_banks.spec import DomainSpec, LLMSettings


def _local(settings: LLMSettings) -> LLMBackend:
    from prompt_banks.backends.local import LocalLlamaBackend

    return LocalLlamaBackend(settings)


def _openai(settings: LLMSettings) -> LLMBackend:
    from prompt_banks.backends.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(settings)


def _vllm(settings: LLMSettings) -> LLMBackend:
    from prompt_banks.backends.vllm_offline import VLLMOfflineBackend

    return VLLMOfflineBackend(settings)


# Imports stay inside the factories: llama_cpp and vllm load only when chosen.
BACKENDS: dict[str, Callable[[LLMSettings], LLMBackend]] = {
    "local": _local,
    "openai": _openai,
    "vllm": _vllm,
}


def resolve_settings(spec_or_settings: DomainSpec | LLMSettings, **overrides: Any) -> LLMSettings:
    """The spec's LLM settings with the non-None overrides (CLI flags) applied and validated."""
    settings = (
        spec_or_settings.llm if isinstance(spec_or_settings, DomainSpec) else spec_or_settings
    )
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    unknown = set(changes) - set(LLMSettings.model_fields)
    if unknown:
        raise UserError(f"llm: unknown setting(s) {sorted(unknown)}")
    return LLMSettings.model_validate({**settings.model_dump(), **changes})


def make_backend(spec_or_settings: DomainSpec | LLMSettings, **overrides: Any) -> LLMBackend:
    """Build the backend a spec names (overrides: backend=, base_url=, model=, model_path=, ...)."""
    settings = resolve_settings(spec_or_settings, **overrides)
    if settings.backend not in BACKENDS:
        raise UserError(f"--backend: '{settings.backend}' is not one of {', '.join(BACKENDS)}")
    return BACKENDS[settings.backend](settings)


__all__ = [
    "BACKENDS",
    "CompletionRequest",
    "FatalLLMError",
    "LLMBackend",
    "LLMError",
    "TransientLLMError",
    "make_backend",
    "resolve_settings",
]
