"""One training step: loss = task + λ·penalty, its update, and the refusal of a non-finite loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from riftune.distributed import DistributedContext
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import NonFiniteLossError, TrainStep
from riftune.models import build_classifier
from riftune.regularizers import RIFT
from riftune.regularizers.base import NoRegularizer

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _setup(lam: float, multilabel: bool = False, class_weights=None):
    torch.manual_seed(0)
    model = build_classifier("timm:test_convnext", 3, pretrained=False, img_size=32)
    images = torch.randn(6, 3, 32, 32)
    labels = torch.randint(0, 2, (6, 3)) if multilabel else torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        cache = model.embed(images)
    reg = RIFT(model.num_features, match="paired", q="identity")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(
        model, reg, optimizer, warmup_cosine(optimizer, 0, 100),
        torch.amp.GradScaler("cpu", enabled=False), CPU, lam=lam, grad_clip=0.0,
        amp_dtype=None, reference_cache=cache, multilabel=multilabel,
        class_weights=class_weights,
    )  # fmt: skip
    return model, reg, step, images, labels, cache


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_loss_is_task_plus_lambda_penalty_and_sgd_takes_its_gradient(multilabel):
    lam = 0.7
    weights = torch.tensor([1.0, 2.0, 0.5])
    model, reg, step, images, labels, cache = _setup(lam, multilabel, weights)
    twin = copy.deepcopy(model)  # the same step by hand
    out = twin(images)
    if multilabel:
        task = F.binary_cross_entropy_with_logits(out.logits, labels.float(), pos_weight=weights)
    else:
        task = F.cross_entropy(out.logits, labels, weight=weights)
    penalty = reg(out.embeddings, cache)
    (task + lam * penalty).backward()
    expected = {n: p - 0.1 * p.grad for n, p in twin.named_parameters()}

    losses = step(images, labels, torch.arange(6))
    assert losses["task"].item() == pytest.approx(task.item(), rel=1e-6)
    assert losses["reg"].item() == pytest.approx(penalty.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(task.item() + lam * penalty.item(), rel=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, expected[name].detach(), rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_is_refused_before_any_update():
    model, _, step, images, labels, _ = _setup(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        step(images, labels, torch.arange(6))
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_lambda_zero_is_plain_finetuning():
    model, _, step, images, labels, _ = _setup(0.0)
    twin = copy.deepcopy(model)
    F.cross_entropy(twin(images).logits, labels).backward()
    step(images, labels, torch.arange(6))
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(param, (twin_param - 0.1 * twin_param.grad).detach()), name


def test_micro_batches_take_the_mean_of_their_losses_and_sum_their_gradients():
    """Two micro-batches of 3: the loss is the mean of the halves' losses and SGD steps along
    ∇(ℓ₀/2) + ∇(ℓ₁/2), added in that order (the order two processes all-reduce)."""
    torch.manual_seed(0)
    model = build_classifier("timm:test_convnext", 3, pretrained=False, img_size=32)
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    twin = copy.deepcopy(model)
    halves = [
        F.cross_entropy(twin(x).logits, y)
        for x, y in zip(images.chunk(2), labels.chunk(2), strict=True)
    ]
    (halves[0] / 2).backward()
    first = {n: p.grad.clone() for n, p in twin.named_parameters()}
    twin.zero_grad()
    (halves[1] / 2).backward()
    summed = {n: first[n] + p.grad for n, p in twin.named_parameters()}
    expected = {n: p - 0.1 * summed[n] for n, p in twin.named_parameters()}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(
        model, NoRegularizer(), optimizer, warmup_cosine(optimizer, 0, 100),
        torch.amp.GradScaler("cpu", enabled=False), CPU, lam=0.0, grad_clip=0.0,
        amp_dtype=None, micro_batches=2,
    )  # fmt: skip
    losses = step(images, labels, torch.arange(6))
    assert losses["task"].item() == pytest.approx((halves[0].item() + halves[1].item()) / 2)
    for name, param in model.named_parameters():
        assert torch.equal(param.grad, summed[name]), name  # bit for bit: the same additions
        torch.testing.assert_close(param, expected[name].detach(), rtol=1e-6, atol=1e-7)
