"""Prompt banks: LLM descriptions of classes, their CLIP text embeddings, the Parquet store and
DuckDB queries over it. This package is the lowest layer: `aape` builds on it, `pipelines` wraps
both, and nothing here imports Prefect."""
