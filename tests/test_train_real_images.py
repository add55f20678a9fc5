"""AAPE on real images: animal-mnist through aape-tiny, a bank from the store, base-to-new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.config import TrainConfig
from aape.protocols import base_to_new
from aape.tasks import load_task
from prompt_banks.embed import embed_domain
from prompt_banks.importers import import_file
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

ANIMALS = {
    "bear": ["A large heavy animal with thick fur.", "A bear stands on its hind legs."],
    "bird": ["A small animal with feathers and wings.", "A bird perched on a branch."],
    "cat": ["A small furry pet with whiskers.", "A cat with pointed ears."],
    "cow": ["A farm animal with spots that gives milk.", "A cow grazing in a field."],
    "dog": ["A loyal pet that barks.", "A dog with floppy ears."],
    "elephant": ["A huge grey animal with a trunk.", "An elephant with big ears."],
    "giraffe": ["A tall animal with a very long neck.", "A giraffe with brown patches."],
    "horse": ["A large animal with a mane and hooves.", "A horse galloping."],
    "sheep": ["A woolly farm animal.", "A sheep with a white fleece."],
    "zebra": ["A horse-like animal with black and white stripes.", "A striped zebra."],
}


@pytest.mark.slow
def test_base_accuracy_beats_chance_on_animal_mnist(tmp_path: Path, home: Path, tiny_clip) -> None:
    bank_file = tmp_path / "animals.json"
    bank_file.write_text(json.dumps(ANIMALS))
    store = BankStore(banks_dir(home))
    import_file(store, bank_file, domain="animals")
    embed_domain(store, "animals", tiny_clip, progress=False)

    def make(seed: int):
        return load_task(
            dataset="animal-mnist",
            home=home,
            clip=tiny_clip,
            bank_domain="animals",
            shots=16,
            seed=seed,
            n_views=2,
        )

    cfg = TrainConfig(
        recipe="adamw",
        epochs=60,
        adamw_lr=5e-3,
        warmup_epochs=0,
        aggregator_heads=4,
        health_max_images=500,
    )
    zero_shot = cfg.model_copy(update={"method": "zeroshot"})
    aape, zs = base_to_new(
        make, "animal-mnist", [cfg, zero_shot], tmp_path / "runs", seeds=[1], progress=False
    )
    # Random aape-tiny embeds these 64 px images almost alike (mean cosine 0.99), so even a
    # linear probe reaches only ~35% on the 5 base classes; AAPE gets ~27%. With 1500 test
    # images a margin of 5 points over chance (20%) is > 4 standard errors.
    chance = 1 / 5
    assert aape["base"] > chance + 0.05, aape["base"]
    assert aape["base"] > zs["base"] + 0.04, (aape["base"], zs["base"])
    assert set(aape["health"]) >= {"teacher_acc", "student_acc"}
    assert 0.0 <= aape["new"] <= 1.0 and aape["H"] is not None
