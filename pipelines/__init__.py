"""Prefect flows: thin, typed wrappers over `prompt_banks` and `aape`. No ML or storage logic."""
