"""The three trainable parts of AAPE: prompt aggregator, prompt generator h, classifier head g.

Shapes: `x` [B, d] image embeddings; a prompt bank `P` [C, n, d] zero-padded with `mask` [C, n].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from aape.config import TrainConfig
from aape.data import ClassTexts

if TYPE_CHECKING:
    from aape.head_kernel import KernelOperands, PromptOperands


def bottleneck(d_in: int, d_out: int, hidden: int, *, zero_last: bool) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    if zero_last:
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
    return net


def bottleneck_width(dim: int) -> int:
    return max(dim // 16, 1)


def masked_mean(bank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised mean of each class's prompts, [..., d]."""
    m = mask.unsqueeze(-1).to(bank.dtype)
    return F.normalize((bank * m).sum(-2) / m.sum(-2).clamp_min(1.0), dim=-1)


def class_embeddings(texts: ClassTexts, kind: str) -> torch.Tensor:
    """The class embedding w_c of the `class_embed` switch, [C, d]."""
    if kind == "template":
        return F.normalize(texts.templates, dim=-1)
    if texts.bank is None:
        raise ValueError(f"class_embed={kind} needs a prompt bank for every class")
    if kind == "bank_mean":
        return texts.bank_mean()
    if kind == "both":
        return F.normalize(F.normalize(texts.templates, dim=-1) + texts.bank_mean(), dim=-1)
    raise ValueError(f"unknown class_embed {kind}")


class PromptAggregator(nn.Module):
    """Condenses a class's prompt bank into one embedding p_a, optionally per image.

    `attention`: per-class learnable query initialised at mean(P_c), plus f(x) when
    `image_query`; multi-head scores against the prompts; values are the prompts themselves, so
    each head returns a convex combination of P_c and p_a = norm(mean over heads). The key
    projection is folded into the query side (score = (Wk^T Wq q) . p), which never projects
    the bank: O(n d) per (image, class) instead of O(n d^2).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        bank: torch.Tensor,
        mask: torch.Tensor,
        *,
        per_class_query: bool = True,
    ) -> None:
        """`per_class_query` False: no learned query per class, the query is mean(P_c) (+ f(x))
        of whatever prompts are given, so the aggregator applies to prompt sets it has never
        seen (an image's own captions, `aape.vl`); `bank` then only gives d."""
        super().__init__()
        dim = bank.shape[-1]
        self.kind = cfg.aggregator
        self.heads = cfg.aggregator_heads
        self.image_query = cfg.image_query
        if self.kind == "attention" and dim % self.heads:
            raise ValueError(f"aggregator_heads={self.heads} must divide d={dim}")
        hidden = bottleneck_width(dim)
        self.query: nn.Parameter | None = None
        if self.kind == "attention":
            if per_class_query:
                self.query = nn.Parameter(masked_mean(bank, mask))  # [C, d]
            self.f = bottleneck(dim, dim, hidden, zero_last=True) if self.image_query else None
            # Identity init: the first scores are cos-like, so p_a starts near mean(P_c).
            self.w_q = nn.Parameter(torch.eye(dim))
            self.w_k = nn.Parameter(torch.eye(dim))
        elif self.kind == "mlp":
            self.mlp = bottleneck(dim, dim, hidden, zero_last=True)
            self.mix_logit = nn.Parameter(torch.zeros(()))  # a = sigmoid(.) starts at 0.5
        self.ffn = bottleneck(dim, dim, 4 * dim, zero_last=True) if cfg.aggregator_ffn else None
        use_ln = cfg.aggregator_ffn or cfg.aggregator_ln_affine
        self.ln = nn.LayerNorm(dim, elementwise_affine=cfg.aggregator_ln_affine) if use_ln else None

    def _z(self, q: torch.Tensor) -> torch.Tensor:
        """Score directions per head for queries [N, d]: [N, H, d], Wk_h^T (Wq q)_h / sqrt(d_h)."""
        rows, dim = q.shape
        dh = dim // self.heads
        # Scale the H*dh query entries, not the H*d outputs (H times fewer; exact when dh is a
        # power of 4, e.g. 64). One bmm over heads; the transposes are views, not copies.
        qh = (q @ self.w_q.T).div_(math.sqrt(dh)).view(rows, self.heads, dh).transpose(0, 1)
        wk = self.w_k.view(self.heads, dh, dim)  # rows of Wk grouped by head
        return torch.bmm(qh, wk).transpose(0, 1)

    def _finish(self, o: torch.Tensor) -> torch.Tensor:
        if self.ffn is not None:
            o = o + self.ffn(o)
        if self.ln is not None:
            o = self.ln(o)
        return F.normalize(o, dim=-1)

    @staticmethod
    def gather(
        bank: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts and prompt mask of each image's class, [B, n, d] and [B, n]."""
        return bank.index_select(0, classes), mask.index_select(0, classes)

    def forward(
        self,
        x: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor,
        classes: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        gathered: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """p_a for image i and its class `classes[i]`: [B, d]. `bank`, `mask` are all classes';
        `gathered` is `gather(bank, mask, classes)` when done ahead (the training pipeline),
        with the mask None for `attention` when every class fills every prompt slot."""
        p, m = self.gather(bank, mask, classes) if gathered is None else gathered
        if m is None and self.kind != "attention":
            raise ValueError(f"the {self.kind} aggregator needs the prompt mask")
        if self.kind == "mean":
            return self._finish(masked_mean(p, m))
        if self.kind == "random":
            pick = torch.multinomial(m.float(), 1, generator=generator).squeeze(1)
            return self._finish(p[torch.arange(len(classes), device=p.device), pick])
        if self.kind == "mlp":
            mean = masked_mean(p, m)
            a = torch.sigmoid(self.mix_logit)
            return self._finish(a * self.mlp(mean) + (1 - a) * mean)
        # The mean over heads of convex combinations is one convex combination: average the
        # attention first, then one weighted sum of the prompts (H times less work).
        attn = self.attention(x, p, m, classes)
        return self._finish(torch.bmm(attn.unsqueeze(1), p).squeeze(1))

    def attention(
        self, x: torch.Tensor, p: torch.Tensor, m: torch.Tensor | None, classes: torch.Tensor
    ) -> torch.Tensor:
        """The `attention` teacher's weight on each of the gathered prompts `p` [B, n, d] of
        image i's class, averaged over heads: [B, n], each row summing to 1."""
        q = self.query[classes] if self.query is not None else self._prompt_mean(p, m)
        if self.f is not None:
            q = q + self.f(x)
        scores = torch.bmm(self._z(q), p.transpose(1, 2))  # [B, H, n]
        if m is not None:
            scores = scores.masked_fill(~m.unsqueeze(1), float("-inf"))
        return scores.softmax(-1).mean(1)

    @staticmethod
    def _prompt_mean(p: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        """The query without a learned one: mean(P_c) of the given prompts, [B, d]."""
        return masked_mean(p, m) if m is not None else F.normalize(p.mean(-2), dim=-1)

    def _project_bank(
        self, bank: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What scoring images against every class reuses: the bank's keys Wk p / sqrt(d_h)
        laid out per head, [H, d_h, C n], and the per class part of the scores, [C, H, n]."""
        c, n, dim = bank.shape
        keys = (bank @ self.w_k.T).div_(math.sqrt(dim // self.heads)).view(c, n, self.heads, -1)
        query = self.query if self.query is not None else masked_mean(bank, mask)
        q = (query @ self.w_q.T).view(c, self.heads, -1)
        class_scores = torch.einsum("chj,cnhj->chn", q, keys)
        return keys.flatten(0, 1).permute(1, 2, 0).contiguous(), class_scores

    @torch.no_grad()
    def all_classes(
        self,
        x: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        projected: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """p_a(x, c) for every image and every class, [B, C, d]; `projected`: `_project_bank`."""
        b, c = x.shape[0], bank.shape[0]
        if self.kind != "attention":
            classes = torch.arange(c, device=bank.device).repeat(b)
            xs = x.repeat_interleave(c, 0)
            return self.forward(xs, bank, mask, classes, generator=generator).view(b, c, -1)
        # Against every class the bank's keys are worth projecting once (C n d^2), after which
        # each image costs C n d instead of the H times more of the folded form in `forward`.
        # q = query_c + f(x) is linear in its two parts, so the scores split into a per class
        # term and a per image term.
        keys, scores = self._project_bank(bank, mask) if projected is None else projected
        scores = scores.unsqueeze(0)
        if self.f is not None:
            n, heads = bank.shape[1], self.heads
            qf = (self.f(x) @ self.w_q.T).view(b, heads, -1).transpose(0, 1)  # [H, B, d_h]
            per_image = torch.bmm(qf, keys).view(heads, b, c, n)
            scores = scores + per_image.permute(1, 2, 0, 3)  # [B, C, H, n]
        else:
            scores = scores.expand(b, -1, -1, -1)
        attn = scores.masked_fill(~mask[None, :, None, :], float("-inf")).softmax(-1)
        return self._finish(torch.einsum("bcn,cnd->bcd", attn.mean(2), bank))

    @torch.no_grad()
    def teacher_scores(
        self,
        x: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """cos(x, p_a(x, c)) for every image and class, [B, C] (the teacher's accuracy)."""
        projected = self._project_bank(bank, mask) if self.kind == "attention" else None
        c, n = mask.shape
        chunk = max(1, 2**20 // (c * max(n * self.heads, bank.shape[-1])))  # ~4 MB temporaries
        scores = []
        for xs in x.split(chunk):
            p_all = self.all_classes(xs, bank, mask, generator=generator, projected=projected)
            scores.append(torch.einsum("bd,bcd->bc", xs, p_all))
        return torch.cat(scores)


class PromptGenerator(nn.Module):
    """h: Linear(d, d/16) - ReLU - Linear(d/16, d); the AAPE itself."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = bottleneck(dim, dim, bottleneck_width(dim), zero_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class HeadCache:
    """What the head precomputes once per class list (see ClassifierHead.prepare), from the
    weights of that moment: a cache belongs to one state of the model. `AAPE.forward` and the
    training updates prepare a fresh one per call; whoever keeps one longer (AAPEClassifier)
    prepares again when the weights change."""

    pre: torch.Tensor  # [C, r]  A w_c + b1
    w0: torch.Tensor  # [C, d]  residual * w_c + b2
    w0_dot_w2: torch.Tensor  # [C, r]  W2^T w0_c
    w0_sq: torch.Tensor  # [C]     ||w0_c||^2
    # Inference only, built by the first call without grad (training's prepare pays nothing):
    kernel: KernelOperands | None = None  # the fused CPU kernel's, see `_kernel_operands`
    prompt: PromptOperands | None = None  # AAPE.logits's h and tau for the kernel (h's weights)
    gram_lin: tuple[torch.Tensor, torch.Tensor] | None = None  # eager: G, [2 W2^T w0_c | 0]


class ClassifierHead(nn.Module):
    """g: w_c(x) = [w_c +] W2 relu(A w_c + B h(x) + b1) + b2, last layer zero-initialised.

    Computing w_c(x) for every class costs O(C r d) per image. The logit only needs
    x . w_c(x) and ||w_c(x)||, both of which expand into r-dimensional terms:
      x . w = x . w0_c + (W2^T x) . u,        ||w||^2 = ||w0_c||^2 + 2 (W2^T w0_c) . u + u^T G u
    with u = relu(A w_c + B h(x) + b1) and G = W2^T W2: O(C r^2) per image, r = d/16.
    Without grad on CPU a fused kernel (aape.head_kernel) uses the triangular form of
    `_kernel_operands` for the norm: r (r + 1) / 2 multiply-adds per image and class.
    """

    def __init__(self, dim: int, *, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.dim = dim
        self.net = bottleneck(2 * dim, dim, bottleneck_width(dim), zero_last=True)

    @property
    def first(self) -> nn.Linear:
        return self.net[0]

    @property
    def last(self) -> nn.Linear:
        return self.net[2]

    def prepare(self, w: torch.Tensor) -> HeadCache:
        a = self.first.weight[:, : self.dim]  # acts on w_c
        w0 = self.last.bias.expand_as(w) + (w if self.residual else 0.0)
        return HeadCache(
            pre=w @ a.T + self.first.bias,
            w0=w0,
            w0_dot_w2=w0 @ self.last.weight,
            w0_sq=(w0 * w0).sum(-1),
        )

    def fused_kernel_applies(self, x: torch.Tensor) -> bool:
        """Whether inference on x takes the fused CPU kernel (float32 on CPU)."""
        return x.device.type == "cpu" and x.dtype == self.last.weight.dtype == torch.float32

    def cosines(self, x: torch.Tensor, h: torch.Tensor, cache: HeadCache) -> torch.Tensor:
        """cos(x, w_c(x)) for every image and class, [B, C], via the expansion above."""
        if not torch.is_grad_enabled():
            return self._cosines_inference(x, h, cache)
        w2 = self.last.weight  # [d, r]
        bh = h @ self.first.weight[:, self.dim :].T  # [B, r]
        u = torch.relu(cache.pre.unsqueeze(0) + bh.unsqueeze(1))  # [B, C, r]
        xw = x @ cache.w0.T + torch.bmm(u, (x @ w2).unsqueeze(-1)).squeeze(-1)
        # ||w||^2 - ||w0||^2 = u . (G u + 2 W2^T w0): one product and one reduction
        t = u @ (w2.T @ w2) + 2 * cache.w0_dot_w2
        sq = cache.w0_sq + torch.linalg.vecdot(t, u)
        return xw / sq.clamp_min(1e-12).sqrt()

    def _cosines_inference(
        self, x: torch.Tensor, h: torch.Tensor, cache: HeadCache
    ) -> torch.Tensor:
        """`cosines` without autograd: the fused kernel where it runs, else eager chunks."""
        if self.fused_kernel_applies(x):
            return self._cosines_fused(x, h, cache)
        return self._cosines_chunked(x, h, cache)

    def kernel_operands(self, cache: HeadCache) -> KernelOperands:
        """The fused kernel's operands for `cache`, built on first use."""
        if cache.kernel is None:
            cache.kernel = self._kernel_operands(cache)
        return cache.kernel

    def _kernel_operands(self, cache: HeadCache) -> KernelOperands:
        """With W2 = Q R (reduced QR, Q orthonormal, R upper triangular),
          ||w0_c + W2 u||^2 = ||Q^T w0_c + R u||^2 + ||w0_c - Q Q^T w0_c||^2,
        exactly: R u costs r (r + 1) / 2 multiply-adds and the rest is per class. Float64, as
        the residual w0_c - Q Q^T w0_c is small when w0_c lies near the span of W2."""
        from aape.head_kernel import KernelOperands  # numba loads only when inference needs it

        w2 = self.last.weight
        q, r = torch.linalg.qr(w2.double())
        w0 = cache.w0.double()
        s0 = w0 @ q
        rest = (w0 - s0 @ q.T).norm(dim=-1)
        b = self.first.weight[:, self.dim :]
        return KernelOperands.pack(cache.w0, cache.pre, s0, rest, r, b, w2)

    def _cosines_fused(self, x: torch.Tensor, h: torch.Tensor, cache: HeadCache) -> torch.Tensor:
        """`cosines` without autograd on CPU: one numba kernel that never materialises
        [B, C, r], and no other op (each costs ~10 us for a single image)."""
        from aape import head_kernel

        return head_kernel.cosines(x, h, self.kernel_operands(cache))

    def _cosines_chunked(self, x: torch.Tensor, h: torch.Tensor, cache: HeadCache) -> torch.Tensor:
        """`cosines` without autograd elsewhere (GPU, other dtypes): in place, over chunks of
        classes so that the [B, c, r] temporaries stay in cache, and with the two r-sized
        reductions done by one bmm."""
        b, r = h.shape[0], self.last.weight.shape[1]
        chunk = max(16, (1 << 18) // (b * r))  # ~1 MB of float32 per temporary
        w2 = self.last.weight
        if cache.gram_lin is None:
            zeros = cache.w0_dot_w2.new_zeros(len(cache.pre), 1)
            cache.gram_lin = (w2.T @ w2, torch.cat([2 * cache.w0_dot_w2, zeros], -1))
        gram, lin = cache.gram_lin
        bh = (h @ self.first.weight[:, self.dim :].T).unsqueeze(1)  # [B, 1, r]
        # [G | W2^T x]: u @ this gives G u (for u^T G u) and u . W2^T x in one product.
        mats = torch.cat([gram.expand(b, r, r), (x @ w2).unsqueeze(-1)], -1)
        xw0 = x @ cache.w0.T  # [B, C]
        out = torch.empty_like(xw0)
        for c0 in range(0, len(cache.pre), chunk):
            c1 = c0 + chunk
            u = torch.add(cache.pre[c0:c1].unsqueeze(0), bh).relu_()  # [B, c, r]
            t = torch.baddbmm(lin[c0:c1].unsqueeze(0), u, mats)  # [B, c, r + 1]
            sq = torch.linalg.vecdot(t[..., :r], u).add_(cache.w0_sq[c0:c1])
            out[:, c0:c1] = (xw0[:, c0:c1] + t[..., r]) * sq.clamp_min_(1e-12).rsqrt_()
        return out

    def explicit(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """w_c(x) materialised, [B, C, d]: the reference the fast path must equal."""
        b, c = h.shape[0], w.shape[0]
        inp = torch.cat([w.unsqueeze(0).expand(b, -1, -1), h.unsqueeze(1).expand(-1, c, -1)], -1)
        out = self.net(inp)
        return out + w if self.residual else out


class AAPE(nn.Module):
    """h + g (+ the aggregator while training). Inference needs only h, g and class embeddings."""

    def __init__(
        self,
        dim: int,
        cfg: TrainConfig,
        bank: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.tau = cfg.tau
        self.h = PromptGenerator(dim)
        self.g = ClassifierHead(dim, residual=cfg.head_residual)
        self.aggregator = PromptAggregator(cfg, bank, mask) if bank is not None else None

    def logits(
        self, x: torch.Tensor, cache: HeadCache, h: torch.Tensor | None = None
    ) -> torch.Tensor:
        """cos(x', w_c(x')) / tau [B, C] for image embeddings x [B, d], x' = x / ||x||, with
        h(x') unless given; `cache` from `g.prepare` with the current weights.

        Without autograd on CPU one numba kernel does it all (normalisation, h, the head, 1 / tau)
        and the way there touches no module attribute and only the torch ops it needs: after the
        kernel's operand stream has flushed L2, each costs 5-20 us for a single image."""
        if h is None and not torch.is_grad_enabled() and x.is_cpu and x.dtype == torch.float32:
            prompt = cache.prompt if cache.prompt is not None else self._fuse(x, cache)
            if prompt is not None:
                return prompt.logits(x, cache.kernel)
        x = F.normalize(x, dim=-1)
        h = self.h(x) if h is None else h
        return self.g.cosines(x, h, cache) / self.tau

    def _fuse(self, x: torch.Tensor, cache: HeadCache) -> PromptOperands | None:
        """Builds the fused kernel's operands into `cache` (the head's and h's), or None where
        the weights are not CPU float32 (the eager path then)."""
        if not self.g.fused_kernel_applies(x):
            return None
        from aape.head_kernel import PromptOperands  # numba loads only when inference needs it

        self.g.kernel_operands(cache)
        first, last = self.h.net[0], self.h.net[2]
        cache.prompt = PromptOperands.pack(
            (first.weight, first.bias),
            (last.weight, last.bias),
            self.g.first.weight[:, self.dim :],
            self.g.last.weight,
            self.tau,
        )
        return cache.prompt

    def forward(self, x: torch.Tensor, class_embed: torch.Tensor) -> torch.Tensor:
        return self.logits(x, self.g.prepare(class_embed))

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights an artifact carries: h and g only."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("h.", "g."))}
