"""Model-level properties of AAPE on synthetic tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.config import TrainConfig
from aape.model import AAPE, ClassifierHead, PromptAggregator, class_embeddings, masked_mean
from aape.synthetic import make_task


def _bank(c: int = 5, n: int = 7, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(c, n, d, generator=gen), dim=-1)
    mask = torch.ones(c, n, dtype=torch.bool)
    mask[0, 4:] = False
    return bank * mask.unsqueeze(-1), mask


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its (often degenerate) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def test_head_starts_at_zero_shot_logits() -> None:
    task = make_task(dim=32, n_classes=6)
    cfg = TrainConfig()
    model = AAPE(32, cfg, task.texts.bank, task.texts.bank_mask)
    x = task.test.x
    w = class_embeddings(task.texts, "template")
    torch.testing.assert_close(model(x, w), x @ w.T / cfg.tau, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # W2 = 0: its QR in the CPU kernel's operands is degenerate
        torch.testing.assert_close(model(x, w), x @ w.T / cfg.tau, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("residual", [True, False])
def test_fast_head_equals_explicit_class_weights(residual: bool) -> None:
    model = AAPE(32, TrainConfig(head_residual=residual))
    _perturb(model)
    gen = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(9, 32, generator=gen), dim=-1)
    w = F.normalize(torch.randn(11, 32, generator=gen), dim=-1)
    explicit = model.g.explicit(w, model.h(x))  # [B, C, d]
    want = F.cosine_similarity(x.unsqueeze(1), explicit, dim=-1) / model.tau
    torch.testing.assert_close(model(x, w), want, rtol=1e-4, atol=1e-3)  # autograd path
    with torch.no_grad():  # the fused CPU kernel
        torch.testing.assert_close(model(x, w), want, rtol=1e-4, atol=1e-3)


def _head_with_edge_classes(
    dim: int, n_classes: int, *, residual: bool
) -> tuple[ClassifierHead, torch.Tensor]:
    """A perturbed head and class embeddings [C, d] where class 0 has u = 0 (relu cut for any
    h) and a tiny w0, so w_0(x) is tiny; class 1 (when C > 1) has u = 0 and an ordinary w0."""
    head = ClassifierHead(dim, residual=residual)
    _perturb(head)
    gen = torch.Generator().manual_seed(4)
    w = F.normalize(torch.randn(n_classes, dim, generator=gen), dim=-1)
    e0 = torch.zeros(dim)
    e0[0] = 1.0
    tiny = 1e-4 * torch.randn(dim, generator=gen)
    with torch.no_grad():
        head.first.weight[:, 0] = 50.0  # A w_c = -50 per unit of -e0 in w_c, beyond any B h
        head.last.bias.copy_(e0 + tiny if residual else tiny)  # w0_0 = -e0 + b2 = tiny
    w[0] = -e0
    if n_classes > 1:
        w[1] = -F.normalize(e0 + 0.3 * w[1], dim=0)
    return head, w


def _cosines_float64(head: ClassifierHead, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor):
    """cos(x, w_c(x)) through the materialised w_c(x), in float64."""
    w_x = copy.deepcopy(head).double().explicit(w.double(), h.double())
    return F.cosine_similarity(x.double().unsqueeze(1), w_x, dim=-1)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize(
    ("dim", "n_images", "n_classes"),
    [(32, 1, 1), (48, 5, 7), (80, 1, 37), (512, 9, 130), (1056, 3, 65)],
)
def test_cpu_kernel_equals_explicit_class_weights(
    residual: bool, dim: int, n_images: int, n_classes: int
) -> None:
    head, w = _head_with_edge_classes(dim, n_classes, residual=residual)
    gen = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(n_images, dim, generator=gen), dim=-1)
    h = torch.randn(n_images, dim, generator=gen)
    want = _cosines_float64(head, x, h, w)
    with torch.no_grad():
        cache = head.prepare(w)
        got = head.cosines(x, h, cache)
        assert cache.kernel is not None  # the fused kernel ran, not the eager chunks
        assert torch.equal(head.cosines(x, h, cache), got)  # again from the cached operands
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n_images", [1, 6])
@pytest.mark.parametrize(("dim", "n_classes"), [(32, 1), (48, 7), (80, 37), (512, 130)])
def test_cpu_logits_fold_normalisation_h_and_tau_exactly(
    residual: bool, n_images: int, dim: int, n_classes: int
) -> None:
    torch.manual_seed(0)  # the initial weights: some draws make ||w_c(x)|| ~ 1e-3, ill-conditioned
    model = AAPE(dim, TrainConfig(head_residual=residual))
    _perturb(model.h)
    model.g, w = _head_with_edge_classes(dim, n_classes, residual=residual)
    gen = torch.Generator().manual_seed(7)
    # Unnormalised images, norms 0.01 to 100; a zero image normalises to zero, as F.normalize.
    x = torch.randn(n_images, dim, generator=gen) * torch.logspace(-2, 2, n_images).unsqueeze(1)
    if n_images > 1:
        x[1] = 0.0
    reference = copy.deepcopy(model).double()
    x64 = F.normalize(x.double(), dim=-1)
    want = _cosines_float64(reference.g, x64, reference.h(x64), w) / model.tau
    with torch.no_grad():
        cache = model.g.prepare(w)
        got = model.logits(x, cache)
        assert cache.kernel is not None and cache.prompt is not None  # the fully fused path
    # In cosine units 2e-6: float32 rounding over d = 512 terms (the eager path is as far)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=2e-6 / model.tau)
    with torch.no_grad(), pytest.raises(ValueError, match="model's d"):
        model.logits(x[:, 1:], cache)  # no h(x) to refuse it, so the kernel does


@pytest.mark.parametrize("residual", [True, False])
def test_eager_inference_head_equals_explicit_class_weights(residual: bool) -> None:
    head, w = _head_with_edge_classes(32, 37, residual=residual)
    head = head.double()  # not the CPU kernel's float32: the eager chunks
    gen = torch.Generator().manual_seed(6)
    x = F.normalize(torch.randn(5, 32, generator=gen, dtype=torch.float64), dim=-1)
    h = torch.randn(5, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        cache = head.prepare(w.double())
        got = head.cosines(x, h, cache)
        assert cache.kernel is None and cache.gram_lin is not None
    torch.testing.assert_close(got, _cosines_float64(head, x, h, w))


def test_p_a_lies_in_the_span_of_the_class_prompts() -> None:
    bank, mask = _bank()
    agg = PromptAggregator(TrainConfig(), bank, mask)
    _perturb(agg)
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(5, 32, generator=gen), dim=-1)
    classes = torch.arange(5)
    p_a = agg(x, bank, mask, classes).detach()
    for i, c in enumerate(classes.tolist()):
        prompts = bank[c][mask[c]]  # [n_c, d], n_c < d so the span is a proper subspace
        coef = torch.linalg.lstsq(prompts.T, p_a[i].unsqueeze(1)).solution
        residual = (prompts.T @ coef).squeeze(1) - p_a[i]
        assert residual.norm() < 1e-4
        assert p_a[i].norm() == pytest.approx(1.0, abs=1e-5)


def test_p_a_equals_the_prompt_when_all_prompts_are_identical() -> None:
    bank, mask = _bank()
    bank = bank[:, :1].expand_as(bank) * mask.unsqueeze(-1)
    agg = PromptAggregator(TrainConfig(), bank, mask)
    _perturb(agg)
    x = F.normalize(torch.randn(5, 32), dim=-1)
    torch.testing.assert_close(agg(x, bank, mask, torch.arange(5)), bank[:, 0], atol=1e-5, rtol=0)


def test_attention_starts_near_the_bank_mean_and_all_classes_matches_pairs() -> None:
    bank, mask = _bank()
    agg = PromptAggregator(TrainConfig(), bank, mask)
    x = F.normalize(torch.randn(4, 32), dim=-1)
    cls = torch.tensor([0, 1, 2, 3])
    assert F.cosine_similarity(agg(x, bank, mask, cls), masked_mean(bank, mask)[cls]).min() > 0.99
    _perturb(agg)
    every = agg.all_classes(x, bank, mask)  # [4, 5, d]
    pairs = agg(x, bank, mask, cls)
    torch.testing.assert_close(every[torch.arange(4), cls], pairs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mean", "mlp", "random"])
def test_ablation_aggregators_return_unit_vectors(kind: str) -> None:
    bank, mask = _bank()
    agg = PromptAggregator(TrainConfig(aggregator=kind), bank, mask)
    p = agg(torch.zeros(3, 32), bank, mask, torch.tensor([0, 0, 2]))
    assert p.shape == (3, 32)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(3))
    if kind == "mean":
        torch.testing.assert_close(p[0], masked_mean(bank, mask)[0])
    if kind == "random":  # one of the class's real prompts, never padding
        assert any(torch.allclose(p[0], q, atol=1e-6) for q in bank[0][mask[0]])


def test_parameter_count_matches_the_paper_at_d512() -> None:
    model = AAPE(512, TrainConfig())
    n = sum(p.numel() for p in model.inference_state().values())
    assert 75_000 < n < 90_000  # paper: about 82k for h + g


def test_class_embed_both_is_normalised_sum() -> None:
    task = make_task(dim=16, n_classes=3)
    both = class_embeddings(task.texts, "both")
    want = F.normalize(task.texts.templates + task.texts.bank_mean(), dim=-1)
    torch.testing.assert_close(both, want)
