"""The embed and features flows with an fsspec URL home (`memory://`, standing in for s3)."""

from __future__ import annotations

import uuid

import pytest

from pipelines.embed import embed_bank
from pipelines.features import extract_features
from pipelines.params import EmbedParams, FeatureParams
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_embed_and_features_flows_on_a_url_home(tiny_domain) -> None:
    home = f"memory://aape-flows-{uuid.uuid4().hex}/home"
    tiny_domain.import_bank(home)
    first = embed_bank(EmbedParams(domain=tiny_domain.domain, home=home, shard_size=10))
    assert first["written"] == 27
    assert len(BankStore(banks_dir(home)).embedded_hashes(first["model_id"])) == 27

    params = FeatureParams(
        dataset="folder", data_root=str(tiny_domain.images), home=home, shots=2, n_views=1
    )
    assert extract_features(params)["computed_rows"] == 12 + 9
    again = extract_features(params)
    assert (again["computed_rows"], again["cached_rows"]) == (0, 21)
