"""Benchmark: description generation by CuPL's sequential loop vs this pipeline, against the same
llama.cpp server (infra/llama-cpp/serve.sh: one llama_cpp.server process per parallel slot,
SmolLM2-135M-Instruct by default).

- "sequential" (CuPL's generate_image_prompts.py): for each class, for each question, one
  request asking for n samples, waiting for each answer before the next request. llama.cpp's
  server ignores n and returns one answer, so the loop asks again, one at a time, until it has n.
- "pipeline": `prompt_banks.generate.generate_bank` with the openai backend spread over every
  slot and `--concurrency` requests in flight, writing to a fresh Parquet store.

Both produce the same number of answers for the same domain and print answers/s; the ratio is
pipeline / sequential.

    .venv/bin/python bench/generate.py --slots 2 --samples 2
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank
from prompt_banks.generate_plan import user_message
from prompt_banks.spec import bundled_spec_path, load_spec, render_question
from prompt_banks.store import BankStore

ROOT = Path(__file__).resolve().parents[1]


def start_slots(
    slots: int, threads: int, port: int, batch: int, model: str | None
) -> tuple[subprocess.Popen, str]:
    cmd = [str(ROOT / "infra/llama-cpp/serve.sh"), "--slots", str(slots), "--threads", str(threads),
           "--port", str(port), "--batch", str(batch)]  # fmt: skip
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready: --base-url "):
            return proc, line.split()[-1]
    raise SystemExit("serve.sh exited before the server was ready")


def sequential(spec, url: str) -> tuple[int, float]:
    """CuPL's loop, one request at a time (each with n; one answer back per request here)."""
    answers, start = 0, time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as client:
        for cls in spec.classes:
            for template in spec.questions:
                got: list[str] = []
                while len(got) < spec.samples_per_question:
                    user = user_message(cls, render_question(template, cls.name))
                    messages = [
                        {"role": "system", "content": spec.system_prompt},
                        {"role": "user", "content": user},
                    ]
                    resp = client.post("/chat/completions", json={
                        "model": "local", "messages": messages,
                        "n": spec.samples_per_question - len(got),
                        "temperature": spec.temperature, "max_tokens": spec.max_tokens,
                        "stop": list(spec.stop), "seed": spec.seed + len(got),
                    })  # fmt: skip
                    resp.raise_for_status()
                    got += [c["message"]["content"] for c in resp.json()["choices"]]
                answers += len(got)
    return answers, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", default=str(bundled_spec_path("textile-defects")))
    ap.add_argument("--samples", type=int, default=2, help="samples per question")
    ap.add_argument("--slots", type=int, default=2, help="llama.cpp server processes")
    ap.add_argument("--threads", type=int, default=1, help="threads per slot")
    # One request per slot: a second one queued at a slot interleaves two prompts there, and
    # llama.cpp then evaluates every prompt afresh instead of reusing it for the next sample.
    ap.add_argument("--concurrency", type=int, default=None, help="default: one per slot")
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--batch", type=int, default=512, help="llama.cpp n_batch of the slots")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, alternated")
    args = ap.parse_args()

    spec = load_spec(args.spec).model_copy(update={"samples_per_question": args.samples})
    proc, urls = start_slots(args.slots, args.threads, args.port, args.batch, args.model)
    settings = spec.llm.model_copy(update={"backend": "openai", "base_url": urls, "model": "local"})
    pipe_spec = spec.model_copy(update={"llm": settings})
    totals = {"sequential": [0, 0.0], "pipeline": [0, 0.0]}
    reports = []
    try:
        # Alternate the two (ABBA...) so that a change in the machine's load hits both alike.
        for rep in range(args.repeats):
            order = ("sequential", "pipeline") if rep % 2 == 0 else ("pipeline", "sequential")
            for method in order:
                if method == "sequential":
                    n, t = sequential(spec, urls.split(",")[0])
                else:
                    with tempfile.TemporaryDirectory() as tmp, make_backend(pipe_spec) as backend:
                        report = generate_bank(
                            pipe_spec, BankStore(tmp), backend,
                            concurrency=args.concurrency or args.slots, progress=False,
                        )  # fmt: skip
                    reports.append(report)
                    n, t = report.ok + report.dropped + report.failed, report.seconds
                totals[method][0] += n
                totals[method][1] += t
                print(f"  {method}: {n} answers in {t:.1f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (n_seq, t_seq), (n_pipe, t_pipe) = totals["sequential"], totals["pipeline"]
    report = reports[-1]
    seq_rate, pipe_rate = n_seq / t_seq, n_pipe / t_pipe
    print(f"domain {spec.domain}: {len(spec.classes)} classes x {len(spec.questions)} questions x "
          f"{args.samples} samples; {args.slots} slots x {args.threads} threads, "
          f"n_batch {args.batch}")  # fmt: skip
    print(f"sequential (CuPL loop): {n_seq} answers in {t_seq:.1f} s = {seq_rate:.2f} answers/s")
    print(f"pipeline: {n_pipe} answers in {t_pipe:.1f} s = {pipe_rate:.2f} answers/s "
          f"(last run: {report.ok} ok, {report.dropped} dropped, {report.failed} failed, "
          f"{report.calls} calls)")  # fmt: skip
    print(f"ratio pipeline / sequential: {pipe_rate / seq_rate:.2f}x")


if __name__ == "__main__":
    main()
