"""The artifact and inference without an LLM: export, load, predict, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from PIL import Image

from aape.artifact import export_artifact, read_artifact
from aape.config import TrainConfig
from aape.data import ClassTexts
from aape.inference import AAPEClassifier
from aape.model import AAPE
from aape.synthetic import make_task
from aape.train import AAPEHead, TrainResult, train
from prompt_banks.errors import UserError

FAST = dict(recipe="adamw", epochs=3, warmup_epochs=0, aggregator_heads=4)


def _trained(class_embed: str, dim: int = 32, model_id: str = "synthetic/none"):
    task = make_task(dim=dim, n_classes=5)
    task.model_id = model_id
    return task, train(task, TrainConfig(**FAST, class_embed=class_embed), progress=False)


def test_export_load_predict_features_equals_the_trained_model(tmp_path: Path) -> None:
    task, result = _trained("bank_mean")
    path = export_artifact(result, tmp_path / "art", metrics={"acc1": 0.5})
    clf = AAPEClassifier.load(path)
    names = task.texts.names
    torch.testing.assert_close(
        clf.logits_features(task.test.x, names), result.classifier.logits(task.test.x, task.texts)
    )
    preds = clf.predict_features(task.test.x[:3], names, top_k=2)
    assert len(preds) == 3 and len(preds[0].top_k) == 2 and preds[0].label in names
    assert preds[0].score >= preds[0].top_k[1][1]
    meta = json.loads((path / "config.json").read_text())
    assert meta["training_classes"] == names and meta["metrics"] == {"acc1": 0.5}
    assert meta["config"]["class_embed"] == "bank_mean" and meta["dim"] == 32
    # Any subset / order of the known classes works; class names match canonically.
    sub = clf.logits_features(task.test.x, [names[3], names[1]])
    full = result.classifier.logits(task.test.x, task.texts.subset([3, 1]))
    torch.testing.assert_close(sub, full)
    assert clf.predict_features(task.test.x[:1], ["CLASS_3"])[0].label == "CLASS_3"


def test_class_without_bank_mean_is_refused_by_name(tmp_path: Path) -> None:
    _, result = _trained("bank_mean")
    clf = AAPEClassifier.load(export_artifact(result, tmp_path / "art"))
    with pytest.raises(UserError, match="zebra"):
        clf.logits_features(torch.randn(2, 32), ["class 0", "zebra"])


def test_artifact_keeps_only_h_and_g_and_is_small(tmp_path: Path) -> None:
    cfg = TrainConfig(class_embed="bank_mean")
    model = AAPE(512, cfg)
    names = [f"c{i}" for i in range(10)]
    result = TrainResult(
        cfg.resolve(16),
        AAPEHead(model, "bank_mean"),
        names,
        "m/x",
        512,
        model=model,
        bank_means=torch.randn(10, 512),
    )
    path = export_artifact(result, tmp_path / "art")
    _, tensors = read_artifact(path)
    assert not any(k.startswith("aggregator") for k in tensors)
    assert tensors["bank_means"].shape == (10, 512)
    size = sum(f.stat().st_size for f in path.iterdir())
    assert 250_000 < size < 400_000  # 82k float32 weights + 10 bank means


def test_refuses_another_clip_model_or_dimension(tmp_path: Path, tiny_clip) -> None:
    _, result = _trained("bank_mean")
    path = export_artifact(result, tmp_path / "a")
    with pytest.raises(UserError, match="trained with synthetic/none"):
        AAPEClassifier.load(path, clip=tiny_clip)
    _, other = _trained("bank_mean", dim=32, model_id=tiny_clip.model_id)
    path = export_artifact(other, tmp_path / "b")
    with pytest.raises(UserError, match="dimension"):
        AAPEClassifier.load(path, clip=tiny_clip)


def test_missing_artifact_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="aape export"):
        AAPEClassifier.load(tmp_path)


def _tiny_task(tiny_clip):
    """A real-CLIP task: template embeddings from aape-tiny's text tower, images from its image
    tower (solid colours), so predict() runs CLIP end to end."""
    from aape.features import encode_images
    from prompt_banks.embed import encode_texts, template_text

    names = ["red", "green", "blue"]
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220)]
    images = [Image.new("RGB", (64, 64), c) for c in colours for _ in range(2)]
    x = encode_images(tiny_clip, images)
    templates = torch.as_tensor(
        encode_texts(tiny_clip, [template_text(n) for n in names]).embeddings
    )
    return names, images, x, templates


def test_predict_images_with_real_tiny_clip_and_template_embeddings(
    tmp_path: Path, tiny_clip
) -> None:
    from aape.data import FeatureSet, Task

    names, images, x, templates = _tiny_task(tiny_clip)
    labels = torch.arange(3).repeat_interleave(2)
    bank = templates.unsqueeze(1).repeat(1, 2, 1)
    fs = FeatureSet(
        x=x, labels=labels, image_index=torch.arange(6), view=torch.zeros(6, dtype=torch.long)
    )
    task = Task(
        "colours",
        ClassTexts(names, templates, bank, torch.ones(3, 2, dtype=torch.bool)),
        fs,
        fs,
        model_id=tiny_clip.model_id,
    )
    result = train(task, TrainConfig(**FAST), progress=False)
    from prompt_banks.clip import CLIPRef

    path = export_artifact(result, tmp_path / "art", clip_ref=CLIPRef("aape-tiny"))
    clf = AAPEClassifier.load(path)  # loads aape-tiny from the artifact's own reference
    png = tmp_path / "red.png"
    images[0].save(png)
    preds = clf.predict([images[0], png], names, top_k=3)
    assert preds[0].label == preds[1].label  # PNG round trip is lossless
    assert preds[0].score == pytest.approx(preds[1].score, abs=1e-5)
    want = result.classifier.logits(x[:1], task.texts).softmax(-1)
    assert preds[0].score == pytest.approx(float(want.max()), abs=1e-4)


def test_cli_train_export_predict_end_to_end(tmp_path: Path, tiny_clip, capsys) -> None:
    from aape.byof import write_task
    from aape.cli.main import main

    task = make_task(dim=tiny_clip.dim, n_classes=3, name="byof")
    task.model_id = tiny_clip.model_id
    write_task(task, tmp_path / "feats")
    run, art = tmp_path / "run", tmp_path / "art"
    common = [
        "--features-dir",
        str(tmp_path / "feats"),
        "--quiet",
        "--shots",
        "4",
        "--out",
        str(run),
    ]
    assert main(["train", *common, "--set", "recipe=adamw", "--set", "epochs=2"]) == 0
    assert (run / "checkpoint.pt").is_file() and (run / "metrics.json").is_file()
    assert main(["export", "--run", str(run), "--out", str(art), "--clip-model", "aape-tiny"]) == 0
    png = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (10, 120, 30)).save(png)
    capsys.readouterr()
    assert (
        main(["predict", "--artifact", str(art), "--classes", "cat,dog", "--json", str(png)]) == 0
    )
    (pred,) = json.loads(capsys.readouterr().out)
    assert pred["label"] in ("cat", "dog") and len(pred["top_k"]) == 2
    assert main(["predict", "--artifact", str(art), str(png)]) == 2  # no classes: one-line error
    assert "error: classes" in capsys.readouterr().err


def _template_classifier(
    tmp_path: Path, tiny_clip, monkeypatch
) -> tuple[AAPEClassifier, list[list[str]]]:
    """A class_embed=template classifier on aape-tiny, and the list of text-tower calls."""
    import prompt_banks.embed

    _, result = _trained("template", dim=tiny_clip.dim, model_id=tiny_clip.model_id)
    clf = AAPEClassifier.load(export_artifact(result, tmp_path / "art"), clip=tiny_clip)
    encode, calls = prompt_banks.embed.encode_texts, []

    def counting(clip, texts, **kwargs):
        calls.append(list(texts))
        return encode(clip, texts, **kwargs)

    monkeypatch.setattr(prompt_banks.embed, "encode_texts", counting)
    return clf, calls


def test_a_class_list_is_encoded_and_prepared_once(tmp_path: Path, tiny_clip, monkeypatch) -> None:
    clf, calls = _template_classifier(tmp_path, tiny_clip, monkeypatch)
    x = torch.randn(3, tiny_clip.dim, generator=torch.Generator().manual_seed(0))
    names = ["cat", "dog", "bird"]
    first = clf.logits_features(x, names)
    assert len(calls) == 1
    assert torch.equal(clf.logits_features(x, list(names)), first)
    assert torch.equal(clf.logits_features(x[:1], names), first[:1])  # single images: same
    assert len(calls) == 1  # the templates were not encoded again
    with torch.no_grad():
        torch.testing.assert_close(first, clf.model(x, clf.class_embeddings(names)))


def test_each_class_list_and_weight_state_gets_its_own_head(
    tmp_path: Path, tiny_clip, monkeypatch
) -> None:
    clf, calls = _template_classifier(tmp_path, tiny_clip, monkeypatch)
    x = torch.randn(3, tiny_clip.dim, generator=torch.Generator().manual_seed(0))
    names, other = ["cat", "dog", "bird"], ["bird", "cat"]
    first = clf.logits_features(x, names)
    second = clf.logits_features(x, other)
    assert second.shape == (3, 2) and len(calls) == 2
    # The same classes reordered (up to rounding: the text tower sees another batch)
    torch.testing.assert_close(second, first[:, [2, 0]], rtol=1e-4, atol=1e-4)
    assert torch.equal(clf.logits_features(x, names), first) and len(calls) == 2
    with torch.no_grad():  # an in-place change of the weights: prepared again, not re-encoded
        clf.model.h.net[2].bias.add_(0.5)
        want = clf.model(x, clf.class_embeddings(names))
    calls.clear()
    changed = clf.logits_features(x, names)
    assert len(calls) == 0 and not torch.allclose(changed, first)
    torch.testing.assert_close(changed, want)
    for i in range(8):  # eight other lists push the first out of the bounded cache
        clf.logits_features(x, [f"class {i}"])
    assert len(calls) == 8
    clf.logits_features(x, names)
    assert len(calls) == 9
