"""Loading CLIP: the tiny random architecture, local weight files, and the errors users get."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import open_clip
import pytest
import torch
from clip_files import hub_config, json_bytes, tiny_model, write_hf_cache, write_openai_torchscript
from huggingface_hub import constants as hf_constants
from safetensors.torch import save as safetensors_save

from prompt_banks.clip import CLIPRef, legacy_model_id, load_clip
from prompt_banks.clip_weights import cached_digest, digest_cache_file, weights_digest
from prompt_banks.embed import encode_texts
from prompt_banks.errors import UserError

TEXTS = ["a photo of a cat.", "A Sphynx is a hairless cat."]
ROOT = Path(__file__).resolve().parents[1]


def test_aape_tiny_is_small_and_says_it_is_untrained(caplog):
    with caplog.at_level(logging.WARNING, logger="prompt_banks.clip"):
        clip = load_clip(CLIPRef("aape-tiny"), device="cpu")
    assert clip.dim == 64 and clip.context_length == 77 and clip.untrained
    assert clip.model_id == "aape-tiny/random-seed0"
    assert "RANDOM, UNTRAINED" in caplog.text
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_random_weights_are_the_same_in_every_load(tiny_clip):
    again = load_clip(CLIPRef("aape-tiny"), device="cpu")
    assert torch.equal(
        encode_texts(tiny_clip, TEXTS).embeddings, encode_texts(again, TEXTS).embeddings
    )


def test_local_weights_file_reloads_identically_with_another_model_id(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = load_clip(CLIPRef("aape-tiny", pretrained=str(path)), device="cpu")
    assert not loaded.untrained
    assert loaded.model_id.startswith("aape-tiny/w-") and loaded.model_id != tiny_clip.model_id
    assert torch.equal(
        encode_texts(loaded, TEXTS).embeddings, encode_texts(tiny_clip, TEXTS).embeddings
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (CLIPRef("ViT-Nope-99"), "is not an open_clip architecture"),
        (CLIPRef("ViT-B-16", pretrained="no-such-tag"), "is not a tag of ViT-B-16"),
        (CLIPRef("ViT-B-16"), "needs weights"),
        (CLIPRef("aape-tiny", pretrained="/no/such/weights.pt"), "does not exist"),
        (CLIPRef("local-dir:/no/such/folder"), "/no/such/folder"),
    ],
)
def test_bad_clip_refs_are_user_errors(ref, message):
    with pytest.raises(UserError, match=message):
        load_clip(ref, device="cpu")


@pytest.mark.slow
def test_a_real_tag_offline_fails_fast_with_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"clip pretrained: could not load .*'openai'"):
        load_clip(CLIPRef("ViT-B-16", pretrained="openai"), device="cpu")
    # No network wait: the time is building ViT-B/16 before open_clip looks for the file.
    assert time.monotonic() - started < 120


# --- CLIP weights as users hold them: hf-hub cache, OpenAI TorchScript, identity, bad files ---


def _tokens(texts=TEXTS) -> torch.Tensor:
    return open_clip.get_tokenizer("aape-tiny")(texts)


def _images(size: int = 64) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))


def _same_outputs(model, reference) -> bool:
    for m in (model, reference):  # frozen and in eval mode, so the same attention kernels run
        m.eval().requires_grad_(False)
    with torch.inference_mode():
        return torch.equal(model.encode_text(_tokens()), reference.encode_text(_tokens())) and (
            torch.equal(model.encode_image(_images()), reference.encode_image(_images()))
        )


def _safetensors_bytes(model) -> bytes:
    return safetensors_save({k: v.contiguous() for k, v in model.state_dict().items()})


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _hub_repo(files: dict[str, bytes]) -> str:
    repo = f"aape-test/tiny-{uuid.uuid4().hex[:8]}"
    write_hf_cache(Path(hf_constants.HF_HUB_CACHE), repo, files)
    return repo


def _local_dir(folder: Path, config: dict, weights: dict[str, bytes]) -> str:
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_bytes(json_bytes(config))
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    return f"local-dir:{folder}"


def test_hf_hub_repo_loads_offline_from_the_hub_cache_layout():
    source = tiny_model(3)
    repo = _hub_repo(
        {
            "open_clip_config.json": json_bytes(hub_config("aape-tiny")),
            "open_clip_model.safetensors": _safetensors_bytes(source),
            "open_clip_pytorch_model.bin": _torch_bytes(source.state_dict()),
        }
    )
    for _ in range(2):  # the second load finds the blob's digest in the cache
        clip = load_clip(CLIPRef(f"hf-hub:{repo}"), device="cpu")
        assert not clip.untrained and clip.dim == 64
        assert _same_outputs(clip.model, source)
    # open_clip prefers the safetensors blob; the id is the content's, not the repo's name
    assert (
        clip.model_id == CLIPRef("aape-tiny", _blob(repo, "open_clip_model.safetensors")).model_id
    )


def _blob(repo: str, name: str) -> str:
    folder = Path(hf_constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    commit = (folder / "refs" / "main").read_text()
    return str((folder / "snapshots" / commit / name).resolve())


def test_hf_hub_repo_with_only_a_pytorch_bin_loads_too():
    source = tiny_model(4)
    repo = _hub_repo(
        {
            "open_clip_config.json": json_bytes(hub_config("aape-tiny")),
            "open_clip_pytorch_model.bin": _torch_bytes(source.state_dict()),
        }
    )
    assert _same_outputs(load_clip(CLIPRef(f"hf-hub:{repo}"), device="cpu").model, source)


def test_hf_hub_repo_missing_from_the_offline_cache_is_a_user_error():
    with pytest.raises(
        UserError, match=r"hf-hub:aape-test/absent is not in the Hugging Face cache"
    ):
        load_clip(CLIPRef("hf-hub:aape-test/absent"), device="cpu")
    config_only = _hub_repo({"open_clip_config.json": json_bytes(hub_config("aape-tiny"))})
    with pytest.raises(UserError, match=r"open_clip_model.safetensors / open_clip_pytorch_model"):
        load_clip(CLIPRef(f"hf-hub:{config_only}"), device="cpu")


def test_one_model_id_for_the_same_weights_in_every_form(tmp_path):
    source = tiny_model(5)
    sd = source.state_dict()
    (tmp_path / "w.safetensors").write_bytes(_safetensors_bytes(source))
    torch.save(sd, tmp_path / "w.pt")
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(checkpoint, tmp_path / "epoch_3.pt")  # an open_clip training checkpoint
    config = hub_config("aape-tiny")
    refs = {
        "safetensors": CLIPRef("aape-tiny", str(tmp_path / "w.safetensors")),
        "state dict .pt": CLIPRef("aape-tiny", str(tmp_path / "w.pt")),
        "training checkpoint": CLIPRef("aape-tiny", str(tmp_path / "epoch_3.pt")),
        "local-dir": CLIPRef(
            _local_dir(
                tmp_path / "dir",
                config,
                {"open_clip_model.safetensors": _safetensors_bytes(source)},
            )
        ),
        "hf-hub": CLIPRef(
            "hf-hub:"
            + _hub_repo(
                {
                    "open_clip_config.json": json_bytes(config),
                    "open_clip_pytorch_model.bin": _torch_bytes(sd),
                }
            )
        ),
    }
    ids = {form: ref.model_id for form, ref in refs.items()}
    assert len(set(ids.values())) == 1, ids
    assert ids["safetensors"].startswith("aape-tiny/w-")
    # other values, or the same values rounded to fp16, are other weights
    torch.save(tiny_model(6).state_dict(), tmp_path / "other.pt")
    torch.save({k: v.half() for k, v in sd.items()}, tmp_path / "half.pt")
    for name in ("other.pt", "half.pt"):
        assert CLIPRef("aape-tiny", str(tmp_path / name)).model_id != ids["safetensors"]
    # the same weights under another architecture (QuickGELU) compute something else
    quick = _local_dir(
        tmp_path / "quick",
        hub_config("aape-tiny", quick_gelu=True),
        {"open_clip_model.safetensors": _safetensors_bytes(source)},
    )
    assert CLIPRef(quick).model_id.split("/w-")[1] == ids["safetensors"].split("/w-")[1]
    assert CLIPRef(quick).model_id != ids["safetensors"]


def test_the_digest_is_cached_until_the_file_changes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model(7).state_dict(), path)
    assert cached_digest(path) is None
    digest = weights_digest(path)
    assert cached_digest(path) == digest
    torch.save(tiny_model(8).state_dict(), path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cached_digest(path) is None and weights_digest(path) != digest
    cache = json.loads(digest_cache_file().read_text())
    assert len([k for k in cache if k.startswith(f"{path.resolve()}|")]) == 1  # the old is gone


def _openai_checkpoint(tmp_path: Path, seed: int, arch: str = "aape-tiny"):
    """(path of an OpenAI-style TorchScript .pt, the float32 model with its exact values)."""
    source = tiny_model(seed, quick_gelu=True, name=arch)
    reference = copy.deepcopy(source)
    open_clip.model.convert_weights_to_lp(reference)  # OpenAI's weights are partly fp16 values
    reference.float()
    path = tmp_path / "ViT-tiny.pt"
    write_openai_torchscript(source, path, image_size=64)
    return path, reference


def test_openai_torchscript_checkpoint_loads_with_identical_outputs(tmp_path):
    path, reference = _openai_checkpoint(tmp_path, seed=9)
    sd = torch.jit.load(str(path)).state_dict()
    assert {
        "visual.conv1.weight",
        "visual.class_embedding",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
        "input_resolution",
        "context_length",
        "vocab_size",
    } <= set(sd)
    assert sd["visual.conv1.weight"].dtype == torch.float16
    with pytest.raises(RuntimeError, match="TorchScript"):  # open_clip's weights_only load today
        torch.load(path, weights_only=True)
    clip = load_clip(CLIPRef("aape-tiny", str(path)), device="cpu")
    assert _same_outputs(clip.model, reference)
    # QuickGELU, as OpenAI trained: the id is that of the same weights in a QuickGELU folder
    folder = _local_dir(
        tmp_path / "dir",
        hub_config("aape-tiny", quick_gelu=True),
        {"open_clip_model.safetensors": _safetensors_bytes(reference)},
    )
    assert clip.model_id == CLIPRef(folder).model_id


def test_openai_torchscript_loads_as_open_clips_openai_loader_does(tmp_path):
    """On an architecture open_clip can infer from the state dict (64-wide heads)."""
    cfg = open_clip.get_model_config("aape-tiny")
    cfg["vision_cfg"]["head_width"] = 64
    cfg["text_cfg"]["heads"] = 1
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "aape-tiny-h64.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    path, _ = _openai_checkpoint(tmp_path, seed=10, arch="aape-tiny-h64")
    ours = load_clip(CLIPRef("aape-tiny-h64", str(path)), device="cpu").model
    theirs = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    assert _same_outputs(ours, theirs)


def _bad_weight_files(folder: Path) -> dict[str, Path]:
    source = tiny_model(11)
    other = open_clip.get_model_config("aape-tiny")
    other["embed_dim"] = 32
    (folder / "cfg").mkdir(parents=True)
    (folder / "cfg" / "aape-tiny-d32.json").write_text(json.dumps(other))
    open_clip.add_model_config(folder / "cfg")
    contents = {
        "notes.pt": b"these are my notes, not weights\n",
        "random.bin": random.Random(0).randbytes(4096),
        "empty.safetensors": b"",
        "cut.safetensors": _safetensors_bytes(source)[:5000],
        "cut.pt": _torch_bytes(source.state_dict())[:5000],
        "text.safetensors": b"not a safetensors file at all",
        "model-object.pt": _torch_bytes(source),
        "list.pt": _torch_bytes([1, 2, 3]),
        "renamed.pt": _safetensors_bytes(source),
        "d32.safetensors": _safetensors_bytes(tiny_model(12, name="aape-tiny-d32")),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


BAD_FILE_MESSAGES = {
    "notes.pt": "is not a CLIP weights file (neither a PyTorch zip or pickle nor safetensors)",
    "random.bin": "is not a CLIP weights file (neither a PyTorch zip or pickle nor safetensors)",
    "empty.safetensors": "is empty (0 bytes); download the weights again",
    "cut.safetensors": "is not a CLIP weights file (unreadable safetensors",
    "cut.pt": "is not a CLIP weights file (truncated or corrupt",
    "text.safetensors": "is not a CLIP weights file (unreadable safetensors",
    "model-object.pt": "is a pickled Python object, not a state dict",
    "list.pt": "it holds a list, not a state dict of tensors",
    "renamed.pt": "safetensors under another name; rename it renamed.safetensors",
    "d32.safetensors": "holds weights of another architecture than aape-tiny (text_projection is "
    "64x32, expected 64x64); pass the --clip-model",
}


def test_bad_weight_files_are_one_line_errors_through_the_cli(tmp_path, capsys):
    from aape.cli.main import main

    for name, path in _bad_weight_files(tmp_path / "files").items():
        argv = [
            "bank",
            "embed",
            "--home",
            str(tmp_path / "home"),
            "--domain",
            "pets",
            "--clip-model",
            "aape-tiny",
            "--pretrained",
            str(path),
            "--quiet",
        ]
        for _ in range(2):  # the second time, the other-architecture file's digest is cached
            assert main(argv) == 2, name
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "Traceback" not in err, err
            assert err.startswith(f"error: clip pretrained: {path}"), err
            assert BAD_FILE_MESSAGES[name] in err, err
    assert not any((tmp_path / "home").rglob("*.parquet"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["notes.pt", "d32.safetensors"])
def test_bad_weight_files_exit_2_in_a_real_cli_process(tmp_path, name):
    path = _bad_weight_files(tmp_path / "files")[name]
    cmd = [
        sys.executable,
        "-m",
        "aape.cli.main",
        "bank",
        "embed",
        "--domain",
        "pets",
        "--home",
        str(tmp_path / "home"),
        "--clip-model",
        "aape-tiny",
        "--pretrained",
        str(path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and BAD_FILE_MESSAGES[name] in lines[0], done.stderr


def test_an_artifact_accepts_the_same_weights_given_another_way(tmp_path):
    from aape.artifact import export_artifact
    from aape.config import TrainConfig
    from aape.inference import AAPEClassifier
    from aape.synthetic import make_task
    from aape.train import train

    source = tiny_model(13)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    as_pt = CLIPRef("aape-tiny", str(tmp_path / "w.pt"))
    task = make_task(dim=64, n_classes=3)
    task.model_id = as_pt.model_id  # trained on features of the .pt
    cfg = TrainConfig(recipe="adamw", epochs=1, warmup_epochs=0, aggregator_heads=4)
    result = train(task, cfg, progress=False)
    folder = _local_dir(
        tmp_path / "dir",
        hub_config("aape-tiny"),
        {"open_clip_model.safetensors": _safetensors_bytes(source)},
    )
    art = export_artifact(result, tmp_path / "art", clip_ref=CLIPRef(folder))  # same weights
    AAPEClassifier.load(art, clip=load_clip(CLIPRef(folder), device="cpu"))
    (tmp_path / "other.safetensors").write_bytes(_safetensors_bytes(tiny_model(14)))
    other = CLIPRef("aape-tiny", str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="is not the CLIP the run used"):
        export_artifact(result, tmp_path / "art2", clip_ref=other)
    with pytest.raises(UserError, match="the artifact was trained with aape-tiny/w-"):
        AAPEClassifier.load(art, clip=load_clip(other, device="cpu"))
    # a run made before ids came from content names the .pt by its bytes' sha256
    result.model_id = legacy_model_id(as_pt)
    assert result.model_id.startswith("aape-tiny/file-")
    old = export_artifact(result, tmp_path / "old", clip_ref=as_pt)
    AAPEClassifier.load(old, clip=load_clip(as_pt, device="cpu"))


def test_bad_local_dir_and_hub_refs_are_user_errors(tmp_path):
    source_bytes = _safetensors_bytes(tiny_model(15))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "open_clip_model.safetensors").write_bytes(source_bytes)
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "open_clip_config.json").write_text("{not json")
    no_weights = _local_dir(tmp_path / "no-weights", hub_config("aape-tiny"), {})
    unbuildable = _local_dir(
        tmp_path / "unbuildable",
        {"model_cfg": {"embed_dim": 64}},
        {"open_clip_model.safetensors": source_bytes},
    )
    cases = [
        (CLIPRef(unbuildable), "open_clip cannot build the model_cfg of local-dir:"),
        (
            CLIPRef(f"local-dir:{no_config}"),
            "no-config has no open_clip_config.json; an open_clip folder holds",
        ),
        (CLIPRef(f"local-dir:{bad_json}"), "bad-json/open_clip_config.json is not valid JSON"),
        (CLIPRef(no_weights), "has no weights file; put open_clip_model.safetensors"),
        (CLIPRef(no_weights, "openai"), "brings its own weights; drop --pretrained openai"),
    ]
    for ref, message in cases:
        with pytest.raises(UserError, match=message):
            load_clip(ref, device="cpu")


def test_the_store_embeds_once_for_the_same_weights_as_hub_repo_or_file(tmp_path, capsys):
    from aape.cli.main import main

    source = tiny_model(16)
    repo = _hub_repo(
        {
            "open_clip_config.json": json_bytes(hub_config("aape-tiny")),
            "open_clip_model.safetensors": _safetensors_bytes(source),
        }
    )
    torch.save(source.state_dict(), tmp_path / "same.pt")
    bank = tmp_path / "pets.json"
    bank.write_text(json.dumps({"Sphynx": ["A hairless cat."], "Bengal": ["A spotted coat."]}))
    home = str(tmp_path / "home")
    assert main(["bank", "import", str(bank), "--domain", "pets", "--home", home]) == 0
    embed = ["bank", "embed", "--domain", "pets", "--home", home, "--quiet", "--clip-model"]
    capsys.readouterr()
    assert main([*embed, f"hf-hub:{repo}"]) == 0
    first = capsys.readouterr().out
    assert "4 encoded" in first and "aape-tiny/w-" in first  # 2 texts + 2 templates
    assert main([*embed, "aape-tiny", "--pretrained", str(tmp_path / "same.pt")]) == 0
    again = capsys.readouterr().out
    assert "0 encoded" in again and "4 already embedded" in again
