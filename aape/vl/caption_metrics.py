"""Captioning metrics against references: CIDEr-D, CLIPScore and RefCLIPScore.

- CIDEr-D is pycocoevalcap's `Cider` scorer (the COCO caption server's: n = 1..4, sigma = 6,
  clipped counts, x10), its IDF taken from the evaluated set's references, as the server does.
- Tokenizer: pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1, lower case, punctuation
  removed) when Java runs; else `python`, a regular-expression approximation of it (lower
  case, words split off punctuation and the clitics 's n't 're 've 'm 'll 'd, the PTB script's
  punctuation tokens removed, brackets spelled -lrb- -rrb- as PTB's). Which one ran is part
  of every result.
- CLIPScore (Hessel et al. 2021): w * max(cos(E_image, E_caption), 0) with w = 2.5;
  RefCLIPScore: the harmonic mean of CLIPScore and max(max_r cos(E_caption, E_r), 0). Captions
  and references are embedded as "A photo depicts <text>", the paper's prompt.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from prompt_banks.errors import UserError

TokenizerName = Literal["auto", "ptb", "python"]
CLIP_W = 2.5
CLIP_PROMPT = "A photo depicts "
# The tokens pycocoevalcap's PTB wrapper drops after tokenising.
PTB_PUNCTUATION = frozenset(
    [
        "''",
        "'",
        "``",
        "`",
        "-LRB-",
        "-RRB-",
        "-LCB-",
        "-RCB-",
        ".",
        "?",
        "!",
        ",",
        ":",
        "-",
        "--",
        "...",
        ";",
    ]
)
_CLITIC = re.compile(r"(?i)(\w)('s|n't|'re|'ve|'m|'ll|'d)\b")
_WORD = re.compile(r"\.\.\.|--|n't|'\w*|[\w]+(?:[.-]\w+)*|[^\w\s]")


def java_available() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# PTB spells brackets -LRB- ...; lower-cased, they escape the wrapper's punctuation list (a real
# quirk of pycocoevalcap: "(red)" scores as "-lrb- red -rrb-"), so the fallback keeps them too.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}


def python_tokenize(text: str) -> str:
    """The documented fallback of the PTB tokenizer: lower-cased tokens joined by spaces."""
    text = _CLITIC.sub(r"\1 \2", text.replace("\n", " ").lower())
    words = (_BRACKETS.get(t, t) for t in _WORD.findall(text))
    return " ".join(t for t in words if t not in PTB_PUNCTUATION)


def resolve_tokenizer(name: TokenizerName = "auto") -> Literal["ptb", "python"]:
    if name == "python":
        return "python"
    if java_available():
        return "ptb"
    if name == "ptb":
        raise UserError(
            "tokenizer: the PTB tokenizer needs Java (`java -version` fails); install a JRE "
            "(Debian: apt-get install default-jre-headless) or pass --tokenizer python"
        )
    return "python"


def tokenize(
    texts: Mapping[str, Sequence[str]], tokenizer: Literal["ptb", "python"]
) -> dict[str, list[str]]:
    """Tokenised texts per key (image), in the given order."""
    if tokenizer == "python":
        return {k: [python_tokenize(t) for t in v] for k, v in texts.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The wrapper joins the texts by newline: an empty text would shift every later line.
    safe = {
        k: [{"caption": t.replace("\n", " ").strip() or "."} for t in v] for k, v in texts.items()
    }
    out = PTBTokenizer().tokenize(safe)
    return {k: out.get(k, [""] * len(v)) for k, v in texts.items()}


def cider_d(
    references: Mapping[str, Sequence[str]],
    candidates: Mapping[str, str],
    tokenizer: TokenizerName = "auto",
) -> tuple[float, list[float], str]:
    """Corpus CIDEr-D, the per-image scores (candidates' order) and the tokenizer that ran."""
    from pycocoevalcap.cider.cider import Cider

    missing = [k for k in candidates if not references.get(k)]
    if missing:
        raise ValueError(f"no references for {len(missing)} image(s), e.g. {missing[0]}")
    if not candidates:
        return 0.0, [], resolve_tokenizer(tokenizer)
    used = resolve_tokenizer(tokenizer)
    keys = list(candidates)
    gts = tokenize({k: list(references[k]) for k in keys}, used)
    res = tokenize({k: [candidates[k]] for k in keys}, used)
    score, per_image = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in per_image], used


def clip_scores(
    image: torch.Tensor,
    candidate: torch.Tensor,
    references: torch.Tensor,
    owner: torch.Tensor,
    w: float = CLIP_W,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image CLIPScore and RefCLIPScore. `image` [N, d], `candidate` [N, d] (embedded
    captions), `references` [M, d] with `owner` [M] the image of each reference."""
    image, candidate = F.normalize(image.float(), dim=-1), F.normalize(candidate.float(), dim=-1)
    references = F.normalize(references.float(), dim=-1)
    clip_s = w * (image * candidate).sum(-1).clamp_min(0.0)
    sims = candidate @ references.T  # [N, M]
    own = owner.unsqueeze(0) == torch.arange(len(image)).unsqueeze(1)
    ref_s = sims.masked_fill(~own, float("-inf")).amax(1).clamp_min(0.0)
    harmonic = 2 * clip_s * ref_s / (clip_s + ref_s)
    return clip_s, torch.where(clip_s + ref_s > 0, harmonic, torch.zeros_like(harmonic))


def cider_d_by_group(
    references: Mapping[str, Sequence[str]],
    candidates: Mapping[str, str],
    group: Mapping[str, str],
    tokenizer: TokenizerName = "auto",
) -> dict[str, float]:
    """CIDEr-D of each group of images (NoCaps' in-/near-/out-domain), each with the IDF of its
    own references, as NoCaps' evaluation scores each domain separately."""
    out = {}
    for name in sorted({group[k] for k in candidates if k in group}):
        keys = [k for k in candidates if group.get(k) == name]
        out[name] = cider_d({k: references[k] for k in keys}, {k: candidates[k] for k in keys},
                            tokenizer)[0]  # fmt: skip
    return out
