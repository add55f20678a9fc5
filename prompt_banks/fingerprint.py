"""A fingerprint of the prompt bank a run reads: which texts, for which classes, under which
CLIP model. Two runs with the same fingerprint read the same bank rows; any import, generation
or clean-up that changes a class's usable texts changes it."""

from __future__ import annotations

from collections.abc import Sequence

from prompt_banks.queries import class_texts
from prompt_banks.schema import stable_hash, text_hash
from prompt_banks.store import BankStore
from prompt_banks.text import canonical_class_name


def bank_fingerprint(store: BankStore, domain: str, classes: Sequence[str], model_id: str) -> str:
    """sha256 (32 hex digits) of the model id, the domain and, per class in the given order,
    the hashes of its usable texts in prompt order (the rows `queries.bank_tensor` reads)."""
    texts = class_texts(store, domain, classes)
    per_class = [
        [canonical_class_name(c), [text_hash(t) for t in texts.get(canonical_class_name(c), [])]]
        for c in classes
    ]
    return stable_hash({"model_id": model_id, "domain": domain, "classes": per_class})
