"""Fast Trainable Projection: a hand-worked projection, three updates against the reference's
rule written out in NumPy, and FTP with full finetuning and LoRA on EfficientNet-Lite0."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from riftune import tuning
from riftune.models.classifier import Classifier
from riftune.optim import FTPAdamW, spd_anchors, spd_param_groups
from riftune.optim.ftp import row_l1_norms
from riftune.runs.state_tree import flatten_state, unflatten_state

LR, BETAS, EPS, WD = 0.1, (0.9, 0.999), 1e-8, 0.1


def _adam(theta, m, v, g, step, decay):
    """One AdamW step in NumPy (decoupled decay first, bias-corrected moments)."""
    m = BETAS[0] * m + (1 - BETAS[0]) * g
    v = BETAS[1] * v + (1 - BETAS[1]) * g * g
    m_hat, v_hat = m / (1 - BETAS[0] ** step), v / (1 - BETAS[1] ** step)
    theta = theta * (1 - LR * decay) - LR * m_hat / (np.sqrt(v_hat) + EPS)
    return theta, m, v


class _ReferenceFTP:
    """The reference code's FTP (GT-RIPL/FTP util/FTP.py) for one tensor, in NumPy float64."""

    def __init__(self, anchor: np.ndarray, k: float):
        self.anchor, self.k, self.t = anchor, k, 0
        self.gamma = self.m = self.v = 0.0
        self.c_prev = self.scale_prev = None

    def norms(self, c: np.ndarray) -> np.ndarray:
        rows = c.reshape(c.shape[0], -1) if c.ndim >= 2 else c.reshape(1, -1)
        return np.abs(rows).sum(1) + 1e-8

    def step(self, tilde: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        c = tilde - self.anchor
        norms = self.norms(c)
        if self.t == 1:
            self.gamma = 1e-8
        else:
            rows = grad.reshape(len(self.scale_prev), -1) * self.c_prev.reshape(
                len(self.scale_prev), -1
            )
            g = float((rows.sum(1) * self.scale_prev).sum())
            g = g * self.k if g > 0 else g
            self.m = 0.9 * self.m + 0.1 * g
            self.v = 0.999 * self.v + 0.001 * g * g
            m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
            self.gamma = min(max(self.gamma - 1e-2 * m_hat / (np.sqrt(v_hat) + 1e-8), 1e-8),
                             norms.max())  # fmt: skip
        ratio = np.clip(self.gamma / norms, 0, 1)
        shape = (-1,) + (1,) * (c.ndim - 1) if c.ndim >= 2 else (1,) * c.ndim
        self.c_prev, self.scale_prev = c, 1 / norms
        return self.anchor + ratio.reshape(shape) * c


def test_row_norms_and_a_hand_worked_projection():
    c = torch.tensor([[3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    assert row_l1_norms(c).flatten().tolist() == pytest.approx([4.0, 1.0], abs=1e-7)
    assert row_l1_norms(torch.tensor([1.0, -2.0, 3.0])).tolist() == pytest.approx([6.0])
    assert row_l1_norms(torch.tensor(-2.0)).item() == pytest.approx(2.0)
    # γ = 2 after a step: row 0 (‖c‖₁ = 4) is halved, row 1 (‖c‖₁ = 1) is inside the ball
    anchor = torch.zeros(2, 2, dtype=torch.float64)
    w = torch.nn.Parameter(anchor + c)
    opt = FTPAdamW([{"params": [w], "weight_decay": 0.0}], {w: anchor}, lr=0.0)
    w.grad = torch.zeros_like(w)
    opt.step()  # first step: γ = 1e-8, W is put back (to 1e-8 in L1 per row) onto W₀
    assert (w.detach() - anchor).abs().sum(1).tolist() == pytest.approx([1e-8, 1e-8])
    w.data.copy_(anchor + c)
    opt.state[w]["ftp_gamma"].fill_(2.0)
    opt.state[w]["ftp_direction"].zero_()  # ∂L/∂γ = 0: Adam leaves γ where it is
    opt.step()
    expected = torch.tensor([[1.5, -0.5], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-8)  # norms carry +1e-8


@pytest.mark.parametrize("k", [1.0, 0.3, 0.0])
def test_three_updates_match_the_reference_rule(k):
    # a: a conv-like weight (rows are output channels), b: a bias (one row), h: no anchor
    rng = np.random.default_rng(0)
    start = {"a": rng.normal(size=(3, 2, 2)), "b": rng.normal(size=4), "h": rng.normal(size=3)}
    anchors_np = {"a": start["a"] + 0.05 * rng.normal(size=(3, 2, 2)), "b": np.zeros(4)}
    # one direction, so the radii grow, then its reverse: a positive radius gradient (× κ)
    base = {key: rng.normal(size=v.shape) for key, v in start.items()}
    grads = [{key: sign * (g + 0.1 * rng.normal(size=g.shape)) for key, g in base.items()}
             for sign in (1, 1, 1, -1, -1)]  # fmt: skip
    params = {key: torch.nn.Parameter(torch.tensor(v)) for key, v in start.items()}
    anchors = {params[key]: torch.tensor(v) for key, v in anchors_np.items()}
    groups = spd_param_groups([{"params": list(params.values())}], anchors)
    opt = FTPAdamW(groups, anchors, ftp_k=k, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    reference = {key: _ReferenceFTP(v, k) for key, v in anchors_np.items()}
    theta = {key: v.copy() for key, v in start.items()}
    moments = {key: (np.zeros_like(v), np.zeros_like(v)) for key, v in theta.items()}
    for step, grad in enumerate(grads, start=1):
        for key, p in params.items():
            p.grad = torch.tensor(grad[key])
        opt.step()
        for key in theta:
            tilde, *moments[key] = _adam(theta[key], *moments[key], grad[key], step,
                                         decay=WD if key == "h" else 0.0)  # fmt: skip
            theta[key] = reference[key].step(tilde, grad[key]) if key in reference else tilde
            np.testing.assert_allclose(params[key].detach().numpy(), theta[key], atol=1e-12)
        for key, ref in reference.items():
            assert opt.state[params[key]]["ftp_gamma"].item() == pytest.approx(ref.gamma)
    assert reference["a"].gamma > 1e-2 and reference["b"].gamma > 1e-2  # the radii grew


def test_refusals():
    w = torch.nn.Parameter(torch.randn(5, 3))
    with pytest.raises(ValueError, match="ftp_k must be >= 0"):
        FTPAdamW([{"params": [w], "weight_decay": 0.0}], {w: torch.zeros(5, 3)}, ftp_k=-1)
    with pytest.raises(ValueError, match="take none"):
        FTPAdamW([w], {w: torch.zeros(5, 3)}, weight_decay=0.01)
    with pytest.raises(ValueError, match="anchor of shape"):
        FTPAdamW([{"params": [w], "weight_decay": 0.0}], {w: torch.zeros(3)})
    with pytest.raises(ValueError, match="fused=True is not supported"):
        FTPAdamW([{"params": [w], "weight_decay": 0.0}], {w: torch.zeros(5, 3)}, fused=True)


# ------------------------------------------------------------ with the finetuning methods
@pytest.fixture(scope="module")
def pristine() -> Classifier:
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    return Classifier(backbone, backbone.num_features, 3, backbone.pretrained_cfg)


def _batches(n: int = 4, count: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 3, (n,), generator=gen))
        for _ in range(count)
    ]


def _optimizer(model: Classifier, method, anchors) -> FTPAdamW:
    groups = spd_param_groups(method.param_groups(model, 1e-2, 1e-2), anchors)
    return FTPAdamW(groups, anchors, ftp_k=1.0, weight_decay=0.01)


def _train(model: Classifier, method, optimizer: FTPAdamW, batches) -> None:
    model.train()
    method.configure(model, 0, 1)
    for images, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()


def _check_inside_the_balls(optimizer: FTPAdamW, anchors) -> None:
    """Every row of every anchored tensor ends within its learned radius γ (L1) of W₀, up to
    float32 rounding of W₀ + r·c (two roundings of each element)."""
    eps = torch.finfo(torch.float32).eps
    for param, anchor in anchors.items():
        gamma = optimizer.state[param]["ftp_gamma"]
        norms = row_l1_norms(param.detach() - anchor)
        rounding = row_l1_norms(2 * eps * (param.detach().abs() + anchor.abs()))
        assert (norms <= gamma + rounding + 1e-8).all()
    assert any(optimizer.state[p]["ftp_gamma"] > 1e-3 for p in anchors)  # the radii did grow


@pytest.mark.parametrize("name", ["full", "lora"])
def test_anchors_and_radii_with_full_finetuning_and_lora(pristine, name):
    model = copy.deepcopy(pristine)
    method = tuning.get(name)()
    method.apply(model)
    anchors = spd_anchors(model, method)
    names = {id(p): n for n, p in model.named_parameters()}
    if name == "lora":  # the adapter factors, anchored at zero
        assert {names[id(p)] for p in anchors} == {
            n for n, p in model.named_parameters() if ".lora_" in n
        }
        assert all(not a.any() for a in anchors.values())
    else:
        assert {id(p) for p in anchors} == {id(p) for p in model.backbone.parameters()}
    optimizer = _optimizer(model, method, anchors)
    _train(model, method, optimizer, _batches(count=6))
    _check_inside_the_balls(optimizer, anchors)


def test_a_resumed_optimizer_continues_bit_identically(pristine):
    """γ, its moments and the last direction travel in the state_dict (through the
    checkpoint's tensor/skeleton form); the anchors are rebuilt from the pretrained model."""
    model, method = copy.deepcopy(pristine), tuning.Full()
    optimizer = _optimizer(model, method, spd_anchors(model, method))
    batches = _batches()
    _train(model, method, optimizer, batches[:2])
    resumed = copy.deepcopy(pristine)
    resumed_optimizer = _optimizer(resumed, method, spd_anchors(resumed, method))
    resumed.load_state_dict(model.state_dict())
    tensors, meta = flatten_state(copy.deepcopy(optimizer.state_dict()))
    resumed_optimizer.load_state_dict(unflatten_state(tensors, meta))
    _train(model, method, optimizer, batches[2:])
    _train(resumed, method, resumed_optimizer, batches[2:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
