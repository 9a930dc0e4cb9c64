"""Regularization, the integrations' framework-free part: its weight, its checks and L2-SP
through it, on the shipped EfficientNet-Lite0 weights and a few BreastMNIST images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from riftune import regularizers
from riftune.budget import DualAscentWeight
from riftune.data import load_dataset
from riftune.errors import UserError
from riftune.integrations import Regularization
from riftune.models import build_classifier


@pytest.fixture(scope="module")
def few(medmnist_dir):
    """The first 24 training images of BreastMNIST at 28 px, as (images, labels, indices)."""
    data = load_dataset("breastmnist", medmnist_dir, img_size=28)
    items = [data.train[i] for i in range(24)]
    return [
        tuple(torch.stack([torch.as_tensor(v) for v in part]) for part in zip(*items, strict=True))
    ]


def test_the_weight_is_lam_a_budget_or_the_cli_default():
    assert Regularization("rift", lam=0.3).lam == 0.3
    budget = Regularization("rift", target_similarity=0.9).weight
    assert isinstance(budget, DualAscentWeight)
    assert (budget.budget, budget.lr, budget.value) == (pytest.approx(0.2), 0.5, 0.0)
    assert Regularization().weight.budget == pytest.approx(2 - 2 * 0.8)  # --reg rift's default
    # no similarity of fixed scale: the regularizer's default λ, as --lam defaults to
    assert Regularization("rift", match="covariance").lam == regularizers.get("rift").default_lam
    assert Regularization("l2sp").lam == regularizers.get("l2sp").default_lam


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("rift",), {"lam": 0.1, "target_similarity": 0.8}, "pass one"),
        (("nope",), {}, "nope"),
        (("rift",), {"match": "sideways"}, "--rift-match"),
    ],
)
def test_settings_riftune_would_refuse_are_one_line(args, kwargs, message):
    with pytest.raises(UserError, match=message) as caught:
        Regularization(*args, **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "why"), [("cka", "teacher"), ("spd", "optimizer")])
def test_what_only_the_engine_runs_is_refused_when_the_cache_fills(few, name, why):
    model = build_classifier("efficientnet_lite0", num_classes=2)
    with pytest.raises(UserError, match=why):
        Regularization(name).fill_cache(model, model.embed, few, "cpu")


def test_indices_must_number_the_training_set(few):
    model = build_classifier("efficientnet_lite0", num_classes=2)
    images, labels, indices = few[0]
    with pytest.raises(UserError, match=r"0\.\.N-1"):
        Regularization("rift").fill_cache(
            model, model.embed, [(images, labels, indices + 1)], "cpu"
        )


def test_l2sp_reads_the_classifier_inside_a_users_module(few):
    """Ω = ‖θ_b − θ_b⁰‖² + r‖θ_head‖², with r = 0.1: after moving the stem's weights by δ,
    δ²·(their count) + 0.1·‖head‖², by hand."""
    holder = nn.ModuleDict({"net": build_classifier("efficientnet_lite0", num_classes=2)})
    classifier = holder["net"]
    l2sp = Regularization("l2sp", lam=2.0)
    l2sp.fill_cache(holder, classifier.embed, few, "cpu")
    head = sum(float(p.square().sum()) for p in classifier.head.parameters())
    with torch.no_grad():
        classifier.backbone.conv_stem.weight.add_(0.01)
    z = classifier.embed(few[0][0])
    term = l2sp(z, few[0][2], holder)
    stem = classifier.backbone.conv_stem.weight.numel() * 0.01**2
    assert l2sp.last_penalty == pytest.approx(stem + 0.1 * head, rel=1e-4)
    assert float(term) == pytest.approx(2.0 * l2sp.last_penalty, rel=1e-6)
    assert l2sp.step_done() == {"penalty": l2sp.last_penalty, "lam": 2.0}
    assert l2sp.step_done() == {}
