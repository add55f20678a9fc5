"""The flows on aape-tiny with the tiny imported domain, against the session's Prefect API."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from llm_stub import StubServer, StubState
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from aape.config import TrainConfig
from pipelines.build_domain import build_domain
from pipelines.embed import embed_bank
from pipelines.features import extract_features
from pipelines.generate import ensure_llm_limit, generate_descriptions, llm_limit_name
from pipelines.params import (
    BuildDomainParams,
    EmbedParams,
    FeatureParams,
    GenerateParams,
    resolve_spec,
)
from prompt_banks.backends import resolve_settings
from prompt_banks.paths import banks_dir
from prompt_banks.queries import list_classes
from prompt_banks.store import BankStore

# Every flow run pays for Prefect (API calls, state changes): seconds, not milliseconds.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_embed_and_features_shard_and_rerun_computes_nothing(tiny_domain, home: Path) -> None:
    tiny_domain.import_bank(home)
    params = EmbedParams(domain=tiny_domain.domain, home=str(home), shard_size=10)
    first = embed_bank(params)
    # 8 descriptions x 3 classes + one template per class, in shards of 10.
    assert (first["encoded"], first["written"], first["shards"]) == (27, 27, 3)
    assert len(BankStore(banks_dir(home)).embedded_hashes(first["model_id"])) == 27
    again = embed_bank(params)
    assert (again["already"], again["encoded"], again["shards"]) == (27, 0, 0)

    fparams = FeatureParams(
        dataset="folder",
        data_root=str(tiny_domain.images),
        home=str(home),
        shots=2,
        n_views=1,
        shard_size=4,
    )
    feats = extract_features(fparams)
    # 2 shots x 3 classes x (centre + 1 view) + (1 val + 2 test) x 3 classes, centre only.
    assert feats["computed_rows"] == 12 + 9 and feats["unreadable"] == []
    assert feats["shards"] == 4  # 15 images in shards of 4
    again = extract_features(fparams)
    assert (again["computed_rows"], again["cached_rows"]) == (0, 21)


def test_generate_holds_the_global_llm_limit(tiny_domain, home: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load(tiny_domain.spec.read_text())
    delay = 0.15
    with StubServer(StubState(delay_s=delay)) as stub:
        spec["llm"] = {
            "backend": "openai",
            "base_url": stub.url,
            "model": "stub",
            "concurrency": 4,
            "samples_per_request": 2,
        }
        path = tmp_path / "stub-spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        limit = llm_limit_name(resolve_settings(resolve_spec(str(path))))
        ensure_llm_limit(
            limit, 1
        )  # an operator's limit: one request at a time, whatever the spec says
        report = generate_descriptions(
            GenerateParams(spec=str(path), home=str(home), progress=False)
        )
        arrivals = sorted(r.at for r in stub.state.requests)
    assert report["llm_limit"] == limit
    assert report["ok"] == 3 * 2 and report["failed"] == 0  # 3 classes x 1 question x 2 samples
    assert len(arrivals) == 3  # one request of n=2 per class
    # With one slot, a request starts only after the previous answer (which takes `delay`).
    gaps = [b - a for a, b in pairwise(arrivals)]
    assert min(gaps) >= delay * 0.9, gaps
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit).limit == 1  # not overwritten
    assert set(list_classes(BankStore(banks_dir(home)), tiny_domain.domain)) == {
        "gauzy",
        "meshed",
        "cracked",
    }


def test_build_domain_end_to_end_then_rerun_recomputes_nothing(tiny_domain, home: Path) -> None:
    tiny_domain.import_bank(home)
    params = BuildDomainParams(
        spec=str(tiny_domain.spec),
        dataset="folder",
        data_root=str(tiny_domain.images),
        home=str(home),
        generate=False,
        shots=(2,),
        n_views=1,
        config=TrainConfig(epochs=2, batch_size=8),
        progress=False,
    )
    first = build_domain(params)
    artifact = Path(first["train"]["artifact"])
    assert json.loads((artifact / "config.json").read_text())["training_classes"] == sorted(
        ["gauzy", "meshed", "cracked"]
    )
    assert first["train"]["untrained_clip"] is True
    methods = {r["method"] for r in first["evaluate"]["runs"]}
    assert {"zeroshot", "cupl", "linear_probe"} < methods and len(methods) == 5  # + aape, lambda 0
    assert Path(first["evaluate"]["report"]["markdown"]).is_file()
    quality = Path(first["bank_quality"]["report"])  # every rebuild shows its bank's quality
    assert "| descriptions with a negative margin |" in quality.read_text()
    assert 0.0 <= first["bank_quality"]["negative_share"] <= 1.0

    again = build_domain(params)
    assert again["embed"]["encoded"] == 0 and again["features"]["computed_rows"] == 0
    assert again["evaluate"]["runs"] == first["evaluate"]["runs"]  # read back, not retrained

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="tiny-textures-folder"))
        )
    names = {r.name for r in runs}
    assert "build-tiny-textures-folder-aape-tiny" in names
    assert "train-tiny-textures-folder-aape-tiny-k2-s1" in names
    assert "bank-quality-tiny-textures-folder-aape-tiny" in names
