"""Flow `bank_quality`: the bank-quality report of a domain on a dataset's few-shot images.

Every rebuild of a domain writes it (`build_domain`), so a schedule shows whether the new bank
is any good: margins of its descriptions, near-duplicates, CuPL against zero-shot, hygiene.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aape.bank_report import bank_report, store_texts, write_bank_report
from pipelines.common import short_model
from pipelines.features import drawn_task
from pipelines.params import BankQualityParams
from pipelines.train import runs_root


@task(cache_policy=NO_CACHE)
def report_bank(params: BankQualityParams) -> dict[str, Any]:
    task_ = drawn_task(params)
    texts, health = store_texts(params.home, params.domain, task_, tokens_of=task_.model_id)
    report = bank_report(task_, texts=texts, hygiene=health)
    out = runs_root(params.home, params.domain) / "bank-report" / task_.name
    paths = write_bank_report(task_, report, out)
    return {
        "report": str(paths["markdown"]),
        "negative_share": report["margin"]["negative_share"],
        "cupl_acc": report["proxies"]["cupl_acc"],
        "zeroshot_acc": report["proxies"]["zeroshot_acc"],
    }


def _run_name() -> str:
    params: BankQualityParams = flow_run.parameters["params"]
    return f"bank-quality-{params.domain}-{params.dataset}-{short_model(params.clip)}"


@flow(name="bank_quality", flow_run_name=_run_name)
def bank_quality(params: BankQualityParams) -> dict[str, Any]:
    """Write the bank-quality report (features and bank must be in the stores)."""
    return report_bank(params)
