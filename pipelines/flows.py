"""Every flow, importable from one place (the entrypoints of infra/prefect/prefect.yaml)."""

from pipelines.bank_quality import bank_quality
from pipelines.build_domain import build_domain
from pipelines.captioning import captioning
from pipelines.compact import compact_stores
from pipelines.embed import embed_bank
from pipelines.evaluate import evaluate, evaluate_grid
from pipelines.features import extract_features
from pipelines.generate import generate_descriptions
from pipelines.retrieval import retrieval
from pipelines.train import train

__all__ = [
    "bank_quality",
    "build_domain",
    "captioning",
    "compact_stores",
    "embed_bank",
    "evaluate",
    "evaluate_grid",
    "extract_features",
    "generate_descriptions",
    "retrieval",
    "train",
]
