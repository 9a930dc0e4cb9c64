"""One training step: loss = task + λ·penalty, its update, and its losses left on the device."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from riftune.distributed import DistributedContext
from riftune.engine.build import Training
from riftune.engine.checkpointer import Checkpointer, TrainState
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import TrainStep
from riftune.engine.weight import ConstantWeight, DualAscentWeight
from riftune.models import build_classifier
from riftune.regularizers import RIFT
from riftune.regularizers import get as get_regularizer
from riftune.regularizers.base import NoRegularizer
from riftune.runs.folder import RunDir

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _setup(lam: float | DualAscentWeight, multilabel: bool = False, class_weights=None):
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
        torch.amp.GradScaler("cpu", enabled=False), CPU,
        weight=lam if isinstance(lam, DualAscentWeight) else ConstantWeight(lam), grad_clip=0.0,
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
    assert losses["task"] == pytest.approx(task.item(), rel=1e-6)
    assert losses["reg"] == pytest.approx(penalty.item(), rel=1e-6)
    assert losses["loss"] == pytest.approx(task.item() + lam * penalty.item(), rel=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, expected[name].detach(), rtol=1e-5, atol=1e-6)


def test_the_step_hands_back_tensors_and_never_waits_to_check_them():
    """A non-finite loss is not checked inside the step (that would read the device back every
    step): it comes back as a scalar tensor, and the loop's step log refuses it
    (tests/engine/test_step_log.py)."""
    weight = DualAscentWeight(budget=0.0, lr=1.0)
    _, _, step, images, labels, _ = _setup(weight)
    images[0, 0, 0, 0] = float("nan")
    losses = step(images, labels, torch.arange(6))
    assert all(torch.is_tensor(v) and v.ndim == 0 for v in losses.values())
    assert torch.isnan(losses["loss"]) and torch.isnan(weight.value)


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
        torch.amp.GradScaler("cpu", enabled=False), CPU, weight=ConstantWeight(0.0), grad_clip=0.0,
        amp_dtype=None, micro_batches=2,
    )  # fmt: skip
    losses = step(images, labels, torch.arange(6))
    assert losses["task"] == pytest.approx((halves[0].item() + halves[1].item()) / 2)
    for name, param in model.named_parameters():
        assert torch.equal(param.grad, summed[name]), name  # bit for bit: the same additions
        torch.testing.assert_close(param, expected[name].detach(), rtol=1e-6, atol=1e-7)


def test_lambda_has_one_owner_the_steps_schedule_logged_and_checkpointed_from_there(tmp_path):
    """The λ a step weighs its penalty with is the one steps.csv logs, the schedule moves it
    after every step, and a checkpoint of the step's objects restores it exactly."""
    weight = DualAscentWeight(budget=0.0, lr=50.0, ema=0.5)  # binds at once: λ rises from 0
    model, _, step, images, labels, _ = _setup(weight)
    used = []
    for _ in range(4):
        losses = step(images, labels, torch.arange(6))
        logged = weight.step_log()
        # loss = task + λ·reg in float32, with the λ the row names
        expected = losses["task"] + logged["lam"].float() * losses["reg"]
        assert torch.equal(losses["loss"], expected)
        used.append(logged["lam"])
    assert used[0] == 0.0 < used[-1] < weight.value  # the first step moves the model away
    training = Training(
        step.regularizer, step.optimizer, step.scheduler, step.scaler, None, None, step
    )
    assert training.stateful()["budget"] is weight  # the step's schedule, under its old key
    run_dir = RunDir(tmp_path / "run")
    Checkpointer(run_dir, CPU).save(TrainState(global_step=4), 0.0, model, training.stateful())

    fresh = DualAscentWeight(budget=0.0, lr=50.0, ema=0.5)
    twin, _, twin_step, _, _, _ = _setup(fresh)
    twin_training = Training(
        twin_step.regularizer, twin_step.optimizer, twin_step.scheduler, twin_step.scaler, None,
        None, twin_step,
    )  # fmt: skip
    Checkpointer(run_dir, CPU).restore(twin, twin_training.stateful())
    assert fresh.state_dict() == weight.state_dict() and fresh.updates == 4
    step(images, labels, torch.arange(6))
    twin_step(images, labels, torch.arange(6))
    assert fresh.step_log() == weight.step_log() and fresh.value == weight.value


def test_an_optimizer_side_regularizer_has_no_lambda_in_the_loss():
    torch.manual_seed(0)
    model = build_classifier("timm:test_convnext", 3, pretrained=False, img_size=32)
    reg = get_regularizer("spd")()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(
        model, reg, optimizer, warmup_cosine(optimizer, 0, 100),
        torch.amp.GradScaler("cpu", enabled=False), CPU, weight=None, grad_clip=0.0,
        amp_dtype=None,
    )  # fmt: skip
    losses = step(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6))
    assert losses["loss"] == losses["task"] and losses["reg"] == 0.0
