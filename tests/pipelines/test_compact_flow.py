"""The `compact_stores` flow and its deployment in infra/prefect/prefect.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.compact import compact_stores
from pipelines.embed import embed_bank
from pipelines.params import CompactParams, EmbedParams
from prompt_banks import snapshots
from prompt_banks.paths import banks_dir
from prompt_banks.queries import stats
from prompt_banks.spec import CLIPSettings
from prompt_banks.store import BankStore

REPO = Path(__file__).resolve().parents[2]


def test_the_deployment_runs_this_flow_with_valid_parameters() -> None:
    spec = yaml.safe_load((REPO / "infra/prefect/prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "compact-stores"]
    path, name = dep["entrypoint"].split(":")
    assert path == "pipelines/compact.py" and name == compact_stores.__name__
    assert dep["schedules"][0]["cron"] == "30 5 * * *"
    assert CompactParams(**dep["parameters"]["params"]).grace_s == 900


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_flow_compacts_both_stores_and_keeps_rows_and_snapshots(tiny_domain, home: Path) -> None:
    tiny_domain.import_bank(home)
    store = BankStore(banks_dir(home))
    first = embed_bank(EmbedParams(domain=tiny_domain.domain, clip=CLIPSettings(), shard_size=5,
                                   home=str(home)))  # fmt: skip
    before = stats(store, tiny_domain.domain)
    assert store.file_count() > 2
    out = compact_stores(CompactParams(home=str(home), grace_s=0))
    assert [r["files_after"] for r in out["bank"]] == [1, 1, 1] and out["features"] == []
    assert store.file_count() == 2 and stats(store, tiny_domain.domain) == before
    model = snapshots.load(store, first["snapshot"]).model_id
    assert (
        snapshots.resolve(store, first["snapshot"], tiny_domain.domain, model).id
        == first["snapshot"]
    )
