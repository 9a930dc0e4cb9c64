"""The similarity budget: dual ascent on λ against the KKT solution of a small constrained
problem, exactly λ = 0 where the budget never binds, the state round trip, and ε for the
similarity penalties against their definitions."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from riftune.budget import ConstantWeight, DualAscentWeight, budget_for_similarity
from riftune.config import RunConfig
from riftune.errors import UserError
from riftune.regularizers import RIFT, StepInputs
from riftune.regularizers import get as get_regularizer
from riftune.regularizers.rift.flags import RiftOptions

TARGET = torch.tensor([3.0, 0.0], dtype=torch.float64)


def _train(weight: DualAscentWeight | None, steps: int, lr: float = 0.05):
    """min ‖w − w*‖² s.t. ‖w‖² ≤ ε by SGD on task + λ·D; returns w, and per step (λ, D, D̄)."""
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr)
    history = []
    for _ in range(steps):
        task = (w - TARGET).square().sum()
        penalty = w.square().sum()
        d = float(penalty.detach())
        lam = weight.value if weight is not None else 0.0
        loss = task + lam * penalty if weight is not None else task
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if weight is not None:
            weight.update(d)
            history.append((lam, d, weight.running))
    return w.detach(), history


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "additive", "ema": 0.0},
        {"mode": "additive", "ema": 0.9},
        {"mode": "geco", "ema": 0.5, "initial": 0.1},
    ],
)
def test_a_binding_budget_raises_lambda_to_the_kkt_multiplier(settings):
    # Unconstrained optimum w* = (3, 0) has D = 9 > ε = 1. KKT: 2(w − w*) + 2λw = 0 and
    # ‖w‖ = 1 give w = (1, 0), λ = 2.
    weight = DualAscentWeight(budget=1.0, lr=0.2, **settings)
    w, history = _train(weight, steps=3000)
    lams = [h[0] for h in history] + [weight.value]
    for t, (_, _, running) in enumerate(history):
        if running > 1.0 + 1e-9:  # violated (beyond rounding): λ strictly rises
            assert lams[t + 1] > lams[t]
    first_violation = next(t for t, h in enumerate(history) if h[2] > 1.0)
    assert lams[first_violation + 1] > lams[first_violation]
    assert float(w.square().sum()) <= 1.0 + 1e-3
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-3, rtol=0)
    assert weight.value == pytest.approx(2.0, abs=1e-2)


def test_a_budget_that_never_binds_keeps_lambda_exactly_zero_and_training_unchanged():
    weight = DualAscentWeight(budget=100.0, lr=0.5, ema=0.9)
    w, history = _train(weight, steps=200)
    assert all(lam == 0.0 for lam, _, _ in history) and weight.value == 0.0
    assert max(d for _, d, _ in history) > 8  # the penalty was large, just within budget
    plain, _ = _train(None, steps=200)
    torch.testing.assert_close(w, plain, rtol=0, atol=0)


def test_state_round_trips_exactly_and_resumes_the_same_trajectory():
    penalties = np.random.default_rng(0).uniform(0.0, 2.0, size=40).tolist()
    first = DualAscentWeight(budget=0.7, lr=0.3, ema=0.8)
    for d in penalties[:17]:
        first.update(d)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = DualAscentWeight(budget=0.7, lr=0.3, ema=0.8)
    second.load_state_dict(torch.load(buffer))
    assert second.state_dict() == first.state_dict() and second.updates == 17
    for d in penalties[17:]:
        assert first.update(d) == second.update(d) == first.value
    assert first.running == second.running
    fresh = DualAscentWeight(budget=0.7, lr=0.3)
    assert fresh.state_dict() == {"value": 0.0, "running": None, "updates": 0}


def test_the_running_mean_and_steps_follow_the_formula():
    weight = DualAscentWeight(budget=1.0, lr=0.5, ema=0.75, initial=0.2)
    weight.update(3.0)  # D̄ = 3, λ = 0.2 + 0.5·2
    assert (weight.running, weight.value) == (3.0, 1.2)
    weight.update(-1.0)  # D̄ = 0.75·3 − 0.25 = 2, λ = 1.2 + 0.5
    assert weight.running == 2.0 and weight.value == pytest.approx(1.7, abs=1e-15)
    geco = DualAscentWeight(budget=1.0, lr=0.5, ema=0.0, mode="geco", initial=1.0, floor=0.1)
    geco.update(3.0)
    assert geco.value == pytest.approx(np.exp(1.0), rel=1e-15)
    geco.update(-20.0)  # exp(−10.5)·e is below the floor
    assert geco.value == 0.1
    with pytest.raises(ValueError, match="must be finite"):  # a number is checked ...
        weight.update(float("nan"))
    weight.update(torch.tensor(float("nan")))  # ... a tensor is not (that would wait for the
    assert torch.isnan(weight.value)  # device): the loss turns non-finite, which the loop refuses


def _python_float_dual_ascent(penalties, budget, lr, ema, mode, initial, floor):
    """The dual ascent on Python floats (the engine's form before λ moved to the device)."""
    value, running, trail = initial, None, []
    for d in penalties:
        running = d if running is None else ema * running + (1 - ema) * d
        if mode == "additive":
            value = max(0.0, value + lr * (running - budget))
        else:
            value = max(floor, value * math.exp(lr * (running - budget)))
        trail.append((value, running))
    return trail


@pytest.mark.parametrize("mode", ["additive", "geco"])
def test_the_device_state_follows_python_floats_to_the_last_bit(mode):
    """λ and D̄ live in float64 tensors (no host read per step); fed the same float32 penalties
    they take the same values as float arithmetic: equal for the additive form, to an ulp of
    exp() for GECO."""
    penalties = torch.rand(300, generator=torch.Generator().manual_seed(0)) * 3
    settings = dict(budget=1.0, lr=0.3, ema=0.9, mode=mode, initial=0.5, floor=1e-3)
    weight = DualAscentWeight(**settings)
    trail = _python_float_dual_ascent(penalties.tolist(), **settings)
    for penalty, (value, running) in zip(penalties, trail, strict=True):
        weight.update(penalty)  # a float32 scalar tensor, as the step gives it
        assert float(weight.running) == running
        if mode == "additive":
            assert float(weight.value) == value
        else:
            assert float(weight.value) == pytest.approx(value, rel=1e-14, abs=0)
    assert weight.value.dtype == torch.float64 and weight.state_dict()["updates"] == 300


@pytest.mark.parametrize(
    "build",
    [
        lambda: DualAscentWeight(budget=-0.1, lr=1.0),
        lambda: DualAscentWeight(budget=1.0, lr=0.0),
        lambda: DualAscentWeight(budget=1.0, lr=1.0, ema=1.0),
        lambda: DualAscentWeight(budget=1.0, lr=1.0, mode="pid"),
        lambda: DualAscentWeight(budget=1.0, lr=1.0, mode="geco"),  # initial 0
        lambda: budget_for_similarity("cka", 1.5),
        lambda: budget_for_similarity("feature-distill", 0.9),
        lambda: budget_for_similarity("rift", 0.9, RiftOptions(match="covariance")),
        lambda: RunConfig.from_dict(
            {"regularizer": {"name": "feature-distill"}, "budget": {"target_similarity": 0.9}}
        ),
    ],
)
def test_bad_settings_are_user_errors(build):
    with pytest.raises(UserError):
        build()


def _embeddings(n: int = 12, d: int = 6):
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = z0 @ torch.randn(d, d, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
        n, d, generator=gen, dtype=torch.float64
    )
    return z, z0


def test_cka_budget_is_one_minus_the_similarity_the_penalty_measures():
    z, z0 = _embeddings()
    zc, z0c = (z - z.mean(0)).numpy(), (z0 - z0.mean(0)).numpy()
    cka = np.linalg.norm(zc.T @ z0c) ** 2 / (
        np.linalg.norm(zc.T @ zc) * np.linalg.norm(z0c.T @ z0c)
    )
    penalty = float(get_regularizer("cka")().penalty(StepInputs(embeddings=z, reference=z0)))
    assert budget_for_similarity("cka", cka) == pytest.approx(penalty, abs=1e-6)


def test_paired_rift_budget_is_two_minus_twice_the_procrustes_similarity():
    z, z0 = _embeddings()
    zc, z0c = (z - z.mean(0)).numpy(), (z0 - z0.mean(0)).numpy()
    z_hat, r_hat = zc / np.linalg.norm(zc), z0c / np.linalg.norm(z0c)
    similarity = np.linalg.svd(r_hat.T @ z_hat, compute_uv=False).sum()  # nuclear norm
    rift = RIFT(dim=z.shape[1], match="paired", q="optimal")
    penalty = float(rift.penalty(StepInputs(embeddings=z, reference=z0)))
    assert budget_for_similarity("rift", similarity) == pytest.approx(penalty, abs=1e-6)


def test_a_constant_weight_never_moves_and_has_nothing_to_log_or_keep():
    weight = ConstantWeight(0.3)
    assert [weight.update(d) for d in (0.0, 5.0, float("nan"))] == [0.3] * 3
    assert weight.value == 0.3 and weight.checkpoint_key is None and not weight.adapts
    assert weight.step_log() == weight.epoch_log() == weight.state_dict() == {}


def test_the_logged_lambda_is_the_one_that_weighed_the_penalty():
    weight = DualAscentWeight(budget=1.0, lr=0.5, ema=0.0, initial=0.2)
    weight.update(3.0)  # weighed by 0.2; then λ = 0.2 + 0.5·(3 − 1)
    assert weight.step_log() == {"lam": 0.2, "reg_mean": 3.0}
    assert weight.epoch_log() == {"lam": 1.2}


def test_the_budget_of_a_run_config_is_its_regularizers_answer():
    config = RunConfig.from_dict(
        {"regularizer": {"name": "cka"}, "budget": {"target_similarity": 0.75}}
    )
    assert config.epsilon == 0.25
