"""Domain specs: what to ask an LLM about which classes, validated from YAML.

A spec names a domain, its classes (with optional aliases and a one-line hint for ambiguous
names), CuPL-style questions, the sampling settings, the LLM backend and the CLIP model that will
embed the answers. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prompt_banks.errors import UserError
from prompt_banks.text import canonical_class_name, normalize_whitespace

# CuPL's generic questions (Pratt et al., ICCV 2023), as AAPE used them; "a(n) {}" is rendered
# with the right article.
DEFAULT_QUESTIONS: tuple[str, ...] = (
    "Describe what a(n) {} looks like.",
    "How can you identify a(n) {}?",
    "What does a(n) {} look like?",
    "Describe an image from the internet of a(n) {}.",
    "A caption of an image of a(n) {}:",
)
# CuPL prompted a completion model with the bare question; a chat model needs to be told the
# shape of the answer it is expected to give.
DEFAULT_SYSTEM_PROMPT = (
    "You describe what things look like in photographs. "
    "Answer with one short, factual, visual sentence."
)
BackendName = Literal["local", "openai", "vllm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    hint: str | None = None  # one line that disambiguates the name ("the bird, not the machine")

    @property
    def canonical(self) -> str:
        return canonical_class_name(self.name)

    @field_validator("hint")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        return normalize_whitespace(v) if v else None


class LLMSettings(_Strict):
    backend: BackendName = "local"
    # openai/vllm: the served model name; local: a registry name (prompt_banks.backends.local).
    model: str | None = None
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8080/v1
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable that holds the key, never the key
    model_path: str | None = None  # local/vllm: any GGUF file / model folder
    endpoint: Literal["chat", "completions"] = "chat"
    structured_output: bool = False  # JSON-schema answers (servers that support response_format)
    samples_per_request: int = Field(default=10, ge=1)  # `n`; servers that ignore it get one each
    concurrency: int = Field(default=4, ge=1)  # requests in flight
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)  # also caps a server's Retry-After
    n_ctx: int = Field(default=1024, ge=64)  # local only
    n_threads: int | None = Field(default=None, ge=1)  # local only; default: half the cores
    # local only: prompt tokens per forward pass; 1 is 2-3x faster where batched CPU kernels are
    # slow (this project's CI VM), llama.cpp's 512 is far faster elsewhere.
    n_batch: int = Field(default=512, ge=1)


class CLIPSettings(_Strict):
    model: str = "aape-tiny"
    pretrained: str | None = None


class DomainSpec(_Strict):
    domain: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    description: str | None = None
    classes: tuple[ClassSpec, ...] = Field(min_length=1)
    questions: tuple[str, ...] = Field(default=DEFAULT_QUESTIONS, min_length=1)
    samples_per_question: int = Field(default=10, ge=1)
    temperature: float = Field(default=0.99, ge=0, le=2)
    max_tokens: int = Field(default=50, ge=1)
    stop: tuple[str, ...] = (".",)
    seed: int = 0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    min_words: int = Field(default=3, ge=1)  # shorter answers are dropped
    # Resampling after drops is bounded: at most this many extra samples per question.
    max_extra_samples_per_question: int = Field(default=10, ge=0)
    llm: LLMSettings = LLMSettings()
    clip: CLIPSettings = CLIPSettings()

    @field_validator("classes", mode="before")
    @classmethod
    def _names_as_classes(cls, v: Any) -> Any:
        """A bare string in the class list is a class with only a name."""
        if isinstance(v, list | tuple):
            return [{"name": c} if isinstance(c, str) else c for c in v]
        return v

    @field_validator("questions")
    @classmethod
    def _has_slot(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for q in v:
            if "{}" not in q:
                raise ValueError(f"question {q!r} has no '{{}}' where the class name goes")
        return v

    @model_validator(mode="after")
    def _unique_classes(self) -> DomainSpec:
        seen: dict[str, str] = {}
        for c in self.classes:
            if c.canonical in seen:
                raise ValueError(
                    f"classes '{seen[c.canonical]}' and '{c.name}' are the same class "
                    f"('{c.canonical}'); keep one"
                )
            seen[c.canonical] = c.name
        return self

    @property
    def target_per_class(self) -> int:
        return len(self.questions) * self.samples_per_question


_ARTICLE_SLOT = re.compile(r"\ba\(n\) \{\}")


def render_question(template: str, name: str) -> str:
    """The question for one class: "a(n) {}" becomes "an apple" / "a dog"."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return _ARTICLE_SLOT.sub(f"{article} {name}", template).replace("{}", name)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].replace("\n", " ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key; check its spelling against prompt_banks/spec.py"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"key '{key}': {msg}{more}"


def parse_spec(data: Any, *, source: str = "spec") -> DomainSpec:
    """Validate an already-loaded mapping; errors are one-line UserErrors naming the key."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys (domain, classes, ...)")
    try:
        return DomainSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_first_error(exc)}") from exc


def load_spec(path: str | os.PathLike[str]) -> DomainSpec:
    """Read and validate a domain spec YAML file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--spec: {p} does not exist; pass a domain spec YAML file") from None
    except OSError as exc:
        raise UserError(f"--spec: cannot read {p} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UserError(
            f"--spec: {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"{p}: not valid YAML{line}; fix the syntax") from exc
    return parse_spec(data, source=str(p))


def bundled_spec_path(domain: str) -> Path:
    """Path of a spec shipped with the package (prompt_banks/specs/<domain>.yaml)."""
    return Path(__file__).with_name("specs") / f"{domain}.yaml"
