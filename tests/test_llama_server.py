"""The openai backend against a real llama.cpp server (llama-cpp-python's OpenAI-compatible
server on 127.0.0.1) serving a tiny random llama GGUF that the test writes with `gguf`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore

pytestmark = pytest.mark.integration

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def write_tiny_llama(
    path: Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 4, seed: int = 0
) -> None:
    """A 2-layer llama with a SentencePiece byte-fallback vocabulary (printable ASCII + bytes)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    tokens += ["▁" if c == " " else c for c in map(chr, range(32, 127))]
    types += [gguf.TokenType.NORMAL] * 95
    n_vocab, n_ff = len(tokens), 2 * n_embd
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-1.0] * 95)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", t(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", t(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    folder = tmp_path_factory.mktemp("gguf")
    model = folder / "tiny-llama.gguf"
    write_tiny_llama(model)
    port = _free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prompt_banks.backends.llama_server", "--model", str(model),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
         "--model_alias", "tiny"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama.cpp server exited: {(folder / 'server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama.cpp server did not start in 90 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def spec_for(url: str, **llm: object):
    return parse_spec(
        {
            "domain": "tiny",
            "classes": ["red thread", "hole"],
            "questions": ["Describe what a(n) {} looks like.", "How can you identify a(n) {}?"],
            "samples_per_question": 2,
            "max_tokens": 12,
            "min_words": 1,
            "max_extra_samples_per_question": 1,
            "llm": {"backend": "openai", "base_url": url, "timeout_s": 60, **llm},
        }
    )


def test_generation_through_a_real_llama_cpp_server(llama_server: str, tmp_path: Path) -> None:
    spec = spec_for(llama_server)
    with make_backend(spec) as backend:
        assert backend.model_id == "tiny"  # read from the server's /v1/models
        report = generate_bank(
            spec, BankStore(tmp_path / "a"), backend, concurrency=2, progress=False
        )
        assert backend._n_honoured is False  # llama.cpp's server ignores n: one request per sample
    assert report.failed == 0 and report.ok + report.dropped == report.rows_written >= 8
    with BankStore(tmp_path / "a").connect() as con:
        got = con.execute("SELECT status, raw_text, question FROM descriptions").fetchall()
    assert all(raw is not None for _, raw, _ in got)
    assert {q for *_, q in got} >= {
        "Describe what a red thread looks like.",
        "How can you identify a hole?",
    }


def test_same_seed_same_rows_and_structured_output(llama_server: str, tmp_path: Path) -> None:
    spec = spec_for(llama_server)
    texts = []
    for name in ("a", "b"):
        with make_backend(spec) as backend:
            generate_bank(spec, BankStore(tmp_path / name), backend, concurrency=2, progress=False)
        with BankStore(tmp_path / name).connect() as con:
            texts.append(
                con.execute("SELECT row_key, raw_text FROM descriptions ORDER BY 1").fetchall()
            )
    assert texts[0] == texts[1]  # sample i is drawn with seed + i on whichever request carries it
    structured = spec_for(llama_server, structured_output=True)
    with make_backend(structured) as backend:
        report = generate_bank(
            structured, BankStore(tmp_path / "json"), backend, concurrency=2, progress=False
        )
    assert report.failed == 0 and report.rows_written >= 8
