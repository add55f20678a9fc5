"""AAPE: aggregate-and-adapt natural-language prompts for CLIP (NeurIPS 2024), as a library.

The method (`aape.model`, `aape.losses`, `aape.train`) works on tensors only: cached CLIP image
features, class template embeddings and the prompt bank (`aape.data.Task`). Datasets, feature
caching, evaluation, baselines and inference build on it; nothing here imports Prefect.
"""
