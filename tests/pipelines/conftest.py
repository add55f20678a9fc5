"""Fixtures of the flow tests: one Prefect API for the whole session, and a tiny domain.

Every flow run talks to a Prefect API; starting one costs seconds, so `prefect_api` starts one
temporary API (SQLite, a subprocess server) per session, only when a flow test asks for it.

The tiny domain: three DTD texture classes whose descriptions are a slice of CuPL's published
GPT-3 answers (imported, not generated: no LLM), and a generated image folder with those class
names. Small enough that a whole build_domain runs in seconds on aape-tiny.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fake_images import image_folder
from ports import free_port

CLASSES = ["gauzy", "meshed", "cracked"]
TEXTS_PER_CLASS = 8


@dataclass(frozen=True)
class TinyDomain:
    domain: str
    spec: Path  # domain spec YAML (classes, aape-tiny CLIP)
    cupl: Path  # CuPL-format JSON with TEXTS_PER_CLASS descriptions per class
    images: Path  # image folder: train/ val/ test/ <class>/*.png

    def import_bank(self, home: Path) -> None:
        """Import the CuPL slice into `home`'s bank store (what `aape bank import` does)."""
        from prompt_banks.importers import import_file
        from prompt_banks.paths import banks_dir
        from prompt_banks.store import BankStore

        import_file(BankStore(banks_dir(home)), self.cupl, domain=self.domain)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Flows and deployments in this session talk to a throwaway Prefect API."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_domain(tmp_path_factory: pytest.TempPathFactory, shared_banks: Path) -> TinyDomain:
    root = tmp_path_factory.mktemp("tiny-domain")
    cupl = json.loads((shared_banks / "cupl_full" / "texture_prompts_full.json").read_text())
    subset = {c: cupl[c][:TEXTS_PER_CLASS] for c in CLASSES}
    (root / "textures.json").write_text(json.dumps(subset))
    spec = {
        "domain": "tiny-textures",
        "classes": CLASSES,
        "questions": ["Describe what a(n) {} looks like."],
        "samples_per_question": 2,
        "clip": {"model": "aape-tiny"},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    images = image_folder(root / "images", CLASSES, {"train": 4, "val": 1, "test": 2})
    return TinyDomain("tiny-textures", root / "spec.yaml", root / "textures.json", images)


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A two-CPU Ray cluster on loopback, started and stopped by infra/ray's scripts; its
    workers import this checkout. Yields its address."""
    port = free_port()
    # Ray's unix sockets live under its temp dir: keep the path short.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {
        **os.environ,
        "RAY": str(Path(sys.executable).parent / "ray"),
        "PYTHONPATH": str(REPO),
        "PORT": str(port),
        "CLIENT_PORT": str(free_port()),
        "NUM_CPUS": "2",
        "RAY_TMPDIR": ray_tmp,
    }
    started = subprocess.run(
        ["bash", "infra/ray/start-head.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()  # this process's driver connection
        subprocess.run(["bash", "infra/ray/stop.sh"], cwd=REPO, env=env, timeout=60, check=False)
        shutil.rmtree(ray_tmp, ignore_errors=True)
