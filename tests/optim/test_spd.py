"""Selective Projection Decay: one update against the paper's rule written out in NumPy, plain
AdamW where there is no anchor, and SPD with full finetuning and LoRA on EfficientNet-Lite0."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from riftune import tuning
from riftune.models.classifier import Classifier
from riftune.optim import SPDAdamW, spd_anchors, spd_param_groups

LR, BETAS, EPS, WD, LAM = 0.1, (0.9, 0.999), 1e-8, 0.1, 0.7


def _adam(theta, m, v, g, step, decay):
    """One AdamW step in NumPy (decoupled decay first, bias-corrected moments)."""
    m = BETAS[0] * m + (1 - BETAS[0]) * g
    v = BETAS[1] * v + (1 - BETAS[1]) * g * g
    m_hat, v_hat = m / (1 - BETAS[0] ** step), v / (1 - BETAS[1] ** step)
    theta = theta * (1 - LR * decay) - LR * m_hat / (np.sqrt(v_hat) + EPS)
    return theta, m, v


def _spd(theta_prev, theta_tilde, theta0, g):
    """The paper's rule: decay only when c = −gᵀ(θ − θ₀) < 0, by λ·max(0, γ_t − γ_{t−1})/γ_t."""
    c = -np.dot(g, theta_prev - theta0)
    if c >= 0:
        return theta_tilde, False
    gamma_t = np.linalg.norm(theta_tilde - theta0)
    gamma_prev = np.linalg.norm(theta_prev - theta0)
    r = max(0.0, gamma_t - gamma_prev) / gamma_t
    return theta_tilde - LAM * r * (theta_tilde - theta0), r > 0


def test_two_updates_match_the_rule_written_out():
    # a: g·(θ−θ₀) > 0, so c < 0, yet Adam's per-coordinate step moves it away (r > 0);
    # b: c > 0, no decay although the step moves it away; h: no anchor, plain AdamW.
    start = {"a": [1.0, -2.0], "b": [1.0, 1.0], "h": [0.5, -0.3, 2.0]}
    grads = [
        {"a": [10.0, 1.0], "b": [-1.0, -1.0], "h": [0.2, -1.0, 0.4]},
        {"a": [3.0, 2.0], "b": [-0.5, -2.0], "h": [-0.1, 0.3, 0.9]},
    ]
    params = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in start.items()}
    anchor_values = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    anchors = {params[k]: torch.tensor(v, dtype=torch.float64) for k, v in anchor_values.items()}
    groups = spd_param_groups([{"params": list(params.values())}], anchors)
    assert [len(g["params"]) for g in groups] == [1, 2] and groups[1]["weight_decay"] == 0.0
    opt = SPDAdamW(groups, anchors, spd_lam=LAM, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)

    theta = {k: np.array(v) for k, v in start.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in theta.items()}
    fired = []
    for step, grad in enumerate(grads, start=1):
        for k, p in params.items():
            p.grad = torch.tensor(grad[k], dtype=torch.float64)
        opt.step()
        for k in theta:
            g = np.array(grad[k])
            tilde, m, v = _adam(theta[k], *moments[k], g, step, decay=WD if k == "h" else 0.0)
            moments[k] = (m, v)
            if k in anchor_values:
                tilde, hit = _spd(theta[k], tilde, np.array(anchor_values[k]), g)
                fired.append((step, k, hit))
            theta[k] = tilde
            np.testing.assert_allclose(params[k].detach().numpy(), theta[k], rtol=0, atol=1e-12)
    assert (1, "a", True) in fired and (1, "b", False) in fired


def test_zero_lambda_is_adamw_exactly_and_anchors_must_not_decay():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    twin = torch.nn.Parameter(w.detach().clone())
    spd = SPDAdamW([{"params": [w], "weight_decay": 0.0}], {w: w.detach().clone() + 1}, spd_lam=0)
    plain = torch.optim.AdamW([{"params": [twin], "weight_decay": 0.0}])
    for i in range(3):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
        w.grad, twin.grad = g.clone(), g.clone()
        spd.step()
        plain.step()
    torch.testing.assert_close(w, twin, rtol=0, atol=0)
    with pytest.raises(ValueError, match="anchored tensors take none"):
        SPDAdamW([w], {w: torch.zeros(5, 3)}, weight_decay=0.01)
    with pytest.raises(ValueError, match="anchor of shape"):
        SPDAdamW([{"params": [w], "weight_decay": 0.0}], {w: torch.zeros(3)})
    with pytest.raises(ValueError, match="fused=True is not supported"):
        SPDAdamW([{"params": [w], "weight_decay": 0.0}], {w: torch.zeros(5, 3)}, fused=True)
    with pytest.raises(ValueError, match="does not hold"):
        SPDAdamW([w], {twin: torch.zeros(5, 3)}, weight_decay=0.0)


# ------------------------------------------------------------ with the finetuning methods
@pytest.fixture(scope="module")
def pristine() -> Classifier:
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    return Classifier(backbone, backbone.num_features, 3, backbone.pretrained_cfg)


def _batches(n: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 3, (n,), generator=gen))
        for _ in range(4)
    ]


def _run(model: Classifier, method, lam: float) -> tuple[dict, list[dict]]:
    """Four SPD steps; per step and anchored tensor: c_t, γ_{t−1}, γ_t (after the step)."""
    method.apply(model)
    anchors = spd_anchors(model, method)
    groups = spd_param_groups(method.param_groups(model, 1e-2, 1e-2), anchors)
    optimizer = SPDAdamW(groups, anchors, spd_lam=lam, weight_decay=0.01)
    model.train()
    method.configure(model, 0, 1)
    log = []
    for images, labels in _batches():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        before = {
            p: (
                -float(torch.vdot(p.grad.flatten(), (p.detach() - a).flatten())),
                float((p.detach() - a).norm()),
            )
            for p, a in anchors.items()
            if p.grad is not None
        }
        optimizer.step()
        log.append(
            {
                p: (c, prev, float((p.detach() - anchors[p]).norm()))
                for p, (c, prev) in before.items()
            }
        )
    return anchors, log


def test_full_finetuning_anchors_the_backbone_at_its_pretrained_weights(pristine):
    model = copy.deepcopy(pristine)
    anchors, log = _run(model, tuning.Full(), lam=1.0)
    backbone = dict(pristine.backbone.named_parameters())
    assert {id(p) for p in anchors} == {id(p) for p in model.backbone.parameters()}
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    for param, anchor in anchors.items():
        torch.testing.assert_close(anchor, backbone[names[id(param)]], rtol=0, atol=0)
    _check_projection(log)


def test_lora_anchors_its_factors_at_zero_and_pulls_the_update_back(pristine):
    model = copy.deepcopy(pristine)
    method = tuning.LoRA()
    anchors, log = _run(model, method, lam=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in anchors} == {
        n for n, p in model.named_parameters() if ".lora_" in n
    }
    assert all(not a.any() for a in anchors.values())
    assert all(not p.requires_grad for p in model.parameters() if ".lora_" not in names[id(p)]
               and not names[id(p)].startswith("head."))  # fmt: skip
    _check_projection(log)


def _check_projection(log: list[dict]) -> None:
    """λ = 1: a tensor whose c_t < 0 ends the step no further from θ₀ than it started, and
    the rule did act (some such tensor would have grown and was projected back)."""
    projected = 0
    for step in log:
        for c, previous, current in step.values():
            if c < 0:
                assert current <= previous * (1 + 1e-5) + 1e-7
                projected += previous > 0 and abs(current - previous) <= 1e-5 * previous
    assert projected > 0
    moved = sum(current != previous for step in log for c, previous, current in step.values())
    assert moved > 0


def test_spd_equals_adamw_when_lambda_is_zero_on_a_real_model(pristine):
    spd_model, plain_model = copy.deepcopy(pristine), copy.deepcopy(pristine)
    _run(spd_model, tuning.Full(), lam=0.0)
    method = tuning.Full()
    groups = method.param_groups(plain_model, 1e-2, 1e-2)
    anchored = {id(p) for p in plain_model.backbone.parameters()}
    optimizer = torch.optim.AdamW(
        spd_param_groups(groups, {p: p for p in plain_model.parameters() if id(p) in anchored}),
        weight_decay=0.01,
    )
    plain_model.train()
    method.configure(plain_model, 0, 1)
    for images, labels in _batches():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(images).logits, labels).backward()
        optimizer.step()
    for (name, a), b in zip(
        spd_model.state_dict().items(), plain_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_resumed_optimizer_continues_bit_identically(pristine):
    """The state_dict is AdamW's; the anchors are rebuilt from the pretrained model."""
    model = copy.deepcopy(pristine)
    method = tuning.Full()
    anchors = spd_anchors(model, method)

    def optimizer_for(net: Classifier, net_anchors) -> SPDAdamW:
        groups = spd_param_groups(method.param_groups(net, 1e-2, 1e-2), net_anchors)
        return SPDAdamW(groups, net_anchors, spd_lam=1.0, weight_decay=0.01)

    def train(net: Classifier, optimizer: SPDAdamW, batches) -> None:
        net.train()
        method.configure(net, 0, 1)
        for images, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(images).logits, labels).backward()
            optimizer.step()

    optimizer = optimizer_for(model, anchors)
    batches = _batches()
    train(model, optimizer, batches[:2])
    resumed = copy.deepcopy(pristine)  # rebuilt from the pretrained weights, as a resume does
    resumed_optimizer = optimizer_for(resumed, spd_anchors(resumed, method))
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(model, optimizer, batches[2:])
    train(resumed, resumed_optimizer, batches[2:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("stored", [False, True])
def test_reg_spd_lam_is_the_optimizers_strength_and_the_step_weighs_no_penalty(
    tmp_path, medmnist_dir, stored
):
    """``--reg spd --lam 2.5`` (flags, or a stored config.yaml) builds SPDAdamW of strength
    2.5; the train step has no λ (its loss is the task loss alone)."""
    from riftune import distributed
    from riftune.config import finetune_parser, read_config, run_config_from_args, write_config
    from riftune.engine import Finetuner

    args = finetune_parser().parse_args(
        ["--data", "breastmnist", "--data-root", str(medmnist_dir), "--img-size", "32",
         "--shots", "20", "--batch-size", "16", "--out", str(tmp_path / "run"), "--reg", "spd",
         "--lam", "2.5"]
    )  # fmt: skip
    config = run_config_from_args(args)
    if stored:
        write_config(config, tmp_path / "config.yaml")
        config = read_config(tmp_path / "config.yaml")
    finetuner = Finetuner(config, distributed.setup("cpu"))
    try:
        finetuner._build()
    finally:
        distributed.teardown()
    training = finetuner.training
    assert isinstance(training.optimizer, SPDAdamW) and training.optimizer.spd_lam == 2.5
    assert training.step.weight is None and "budget" not in training.stateful()
