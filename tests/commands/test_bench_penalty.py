"""penalty_cost and step_inputs: the penalty alone, on the inputs a real TrainStep hands it."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from riftune import distributed
from riftune.commands.bench_penalty import penalty_cost, step_inputs
from riftune.data import load_dataset
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import TrainStep
from riftune.engine.weight import ConstantWeight
from riftune.models import build_classifier
from riftune.regularizers import RIFT, PretrainedView, Regularizer, StepInputs
from riftune.regularizers.base import NoRegularizer
from riftune.regularizers.l2sp import L2SP


class Recording(Regularizer):
    """‖z‖² (and a sleep): keeps the inputs of every call."""

    name = "recording-test"

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.sleep = sleep
        self.calls: list[StepInputs] = []

    def penalty(self, step: StepInputs) -> torch.Tensor:
        self.calls.append(step)
        time.sleep(self.sleep)
        return step.embeddings.square().sum()


@pytest.fixture(scope="module")
def lite0_batch():
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=28, mean=cfg["mean"], std=cfg["std"])
    images, labels, indices = next(iter(DataLoader(Subset(data.train, range(4)), batch_size=4)))
    return model, images, labels, indices


def train_step(model, reg, cache=None) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return TrainStep(
        model,
        reg,
        optimizer,
        warmup_cosine(optimizer, 0, 10),
        torch.amp.GradScaler("cpu", enabled=False),
        distributed.setup("cpu"),
        weight=ConstantWeight(1.0),
        grad_clip=0.0,
        amp_dtype=None,
        reference_cache=cache,
    )


def test_step_inputs_are_what_the_train_step_hands_its_regularizer(lite0_batch):
    model, images, labels, indices = lite0_batch
    cache = torch.randn(4, model.num_features)
    reg = Recording()
    reg.reference = "cache"
    step = train_step(model, reg, cache)
    built = step_inputs(step, images, indices)
    step(images, labels, indices)  # lr 0: the weights stay
    handed = reg.calls[-1]
    torch.testing.assert_close(built.embeddings, handed.embeddings, rtol=0, atol=0)
    assert torch.equal(built.reference, cache[indices]) and built.model is model


def test_penalty_cost_times_each_call_and_calls_warmup_plus_rounds(lite0_batch):
    model, images, _, _ = lite0_batch
    reg = Recording(sleep=0.02)
    inputs = StepInputs(embeddings=model.embed(images))
    seconds = penalty_cost(reg, inputs, rounds=3, warmup=1)
    assert 0.02 <= seconds < 1.0
    assert len(reg.calls) == 4
    leaf = reg.calls[-1].embeddings
    assert leaf.is_leaf and leaf is not inputs.embeddings
    torch.testing.assert_close(leaf.grad, 2 * inputs.embeddings.detach())
    with pytest.raises(ValueError, match="rounds >= 1"):
        penalty_cost(reg, inputs, rounds=0)


def test_the_backward_stops_at_the_embeddings_but_reaches_weights_l2sp_reads(lite0_batch):
    model, images, _, _ = lite0_batch
    model.zero_grad(set_to_none=True)
    z = model.embed(images)  # with the backbone's graph
    rift = RIFT(model.num_features, match="covariance", q="identity")
    rift.fit_reference(torch.randn(64, model.num_features))
    assert penalty_cost(rift, StepInputs(embeddings=z), rounds=1, warmup=0) > 0
    assert all(p.grad is None for p in model.parameters())
    l2sp = L2SP()
    l2sp.prepare(PretrainedView(model=model, train_embeddings=torch.zeros(1, 1)))
    with torch.no_grad():
        model.backbone.conv_stem.weight.add_(0.5)
    penalty_cost(l2sp, StepInputs(embeddings=z, model=model), rounds=1, warmup=0)
    grad = model.backbone.conv_stem.weight.grad
    torch.testing.assert_close(grad, torch.full_like(grad, 2 * 0.5))  # ∂‖θ − θ⁰‖²/∂θ
    with torch.no_grad():
        model.backbone.conv_stem.weight.sub_(0.5)
    assert penalty_cost(NoRegularizer(), StepInputs(embeddings=z), rounds=1, warmup=0) >= 0
