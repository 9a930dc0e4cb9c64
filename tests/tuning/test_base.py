"""The finetuning method protocol (riftune/tuning/base.py) across every method: the registry, flags,
settings, which parameters learn, the pretrained function, the backbone weights and merged state.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from riftune import tuning
from riftune.errors import UserError
from riftune.models.classifier import Classifier

from .conftest import (
    VIT_ONLY,
    _batch,
    _eval_embed,
    _fresh,
    _numel,
    _snapshot,
    _train,
)

ALL_METHODS = ["adaptformer", "bitfit", "full", "linear", "lora", "lp-ft", "oft", "vpt"]
CNN_AND_VIT = ["full", "linear", "bitfit", "lora", "lp-ft", "oft"]


def _expected_trainable(method: str, plain: Classifier) -> int:
    """Trainable parameter count of ``method`` on ``plain``, counted from the modules."""
    backbone = plain.backbone
    head = _numel(plain.head.parameters())
    if method == "full":
        return _numel(plain.parameters())
    if method in ("linear", "lp-ft"):  # lp-ft's first epoch is the probe
        return head
    if method == "bitfit":
        biases = [
            m.bias for m in backbone.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)
        ]
        return head + _numel(biases)
    if method == "lora":
        r, total = 8, head
        for m in backbone.modules():
            if isinstance(m, nn.Linear):
                total += r * (m.in_features + m.out_features)
            elif isinstance(m, nn.Conv2d) and m.groups == 1:
                kh, kw = m.kernel_size
                total += r * m.in_channels * kh * kw + m.out_channels * r
        return total
    if method == "oft":  # in·(b − 1)/2 per layer: in/b blocks of b(b − 1)/2 parameters each
        total = head
        for m in backbone.modules():
            if isinstance(m, nn.Linear):
                size = m.in_features
            elif isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1):
                size = m.in_channels
            else:
                continue
            total += size * (_nearest_divisor(size, 32) - 1) // 2
        return total
    depth, dim = len(backbone.blocks), backbone.embed_dim
    if method == "vpt":  # shallow, 10 tokens
        return head + 10 * dim
    if method == "adaptformer":  # bottleneck 64
        return head + depth * (dim * 64 + 64 + 64 * dim + dim)
    raise AssertionError(method)


def _nearest_divisor(n: int, b: int) -> int:
    """The divisor of n nearest to b, the smaller on a tie (n itself when b >= n): OFT's block."""
    if b >= n:
        return n
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - b), d))


def _cases() -> list[tuple[str, str]]:
    return [(m, a) for m in CNN_AND_VIT for a in ("cnn", "vit")] + [(m, "vit") for m in VIT_ONLY]


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert tuning.available() == sorted(ALL_METHODS)
    for name in ALL_METHODS:
        assert tuning.get(name).name == name
    with pytest.raises(ValueError, match="choose one of: adaptformer, bitfit"):
        tuning.get("prefix-tuning")


def test_flags_have_the_documented_defaults_and_reach_each_method():
    from riftune.config import finetune_parser, run_config_from_args

    parser = finetune_parser()

    def method(flags: str):
        return run_config_from_args(parser.parse_args(flags.split())).method.build()

    lora = method("--method lora")
    assert (lora.rank, lora.alpha, lora.dropout) == (8, 16.0, 0.0)
    assert method("--method lp-ft").lp_epochs is None
    vpt = method("--method vpt")
    assert (vpt.tokens, vpt.mode) == (10, "shallow")
    adapter = method("--method adaptformer")
    assert (adapter.dim, adapter.scale) == (64, 0.1)

    every = (
        "--lora-rank 4 --lora-alpha 8 --lora-dropout 0.1 --lp-epochs 3 "
        "--vpt-tokens 5 --vpt-mode deep --adapter-dim 16 --adapter-scale 0.5"
    )
    vpt = method("--method vpt " + every)  # the other methods' options are ignored
    assert isinstance(vpt, tuning.VPT) and (vpt.tokens, vpt.mode) == (5, "deep")
    lora = method("--method lora " + every)
    assert (lora.rank, lora.alpha, lora.dropout) == (4, 8.0, 0.1)
    assert method("--method lp-ft " + every).lp_epochs == 3
    adapter = method("--method adaptformer " + every)
    assert (adapter.dim, adapter.scale) == (16, 0.5)
    for name in ("full", "linear", "bitfit"):
        config = run_config_from_args(parser.parse_args(f"--method {name} {every}".split()))
        assert config.method.build().name == name
        assert config.method.to_dict() == {"name": name}  # no other method's options


@pytest.mark.parametrize(
    "build",
    [
        lambda: tuning.LoRA(rank=0),
        lambda: tuning.LoRA(dropout=1.0),
        lambda: tuning.LPFT(lp_epochs=-1),
        lambda: tuning.VPT(tokens=0),
        lambda: tuning.VPT(mode="middle"),
        lambda: tuning.AdaptFormer(dim=0),
        lambda: tuning.OFT(block_size=1),
        lambda: tuning.OFT(module_dropout=1.0),
        lambda: tuning.OFT(coft_eps=0.0),
    ],
)
def test_bad_settings_are_user_errors(build):
    with pytest.raises(UserError):
        build()


@pytest.mark.parametrize(("name", "arch"), _cases())
def test_trainable_parameters_and_one_optimizer_per_run(pristine, name, arch):
    model = _fresh(pristine, arch)
    method = tuning.get(name)()
    method.apply(model)
    model.train()
    method.configure(model, 0, 2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert _numel(trainable) == _expected_trainable(name, pristine[arch])
    assert all(p.requires_grad for p in model.head.parameters())

    groups = method.param_groups(model, backbone_lr=1e-4, head_lr=1e-2)
    grouped = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-2
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in model.head.parameters()}
    # Every parameter trainable in any epoch (LP-FT: all of them) is in the optimizer.
    ever = trainable if name != "lp-ft" else list(model.parameters())
    assert {id(p) for p in grouped} == {id(p) for p in ever}
    if name in ("lora", "oft", "vpt", "adaptformer"):
        assert set(by_name) == {"new", "head"} and by_name["new"]["lr"] == 1e-2
    else:
        assert by_name.get("backbone", {"lr": 1e-4})["lr"] == 1e-4


@pytest.mark.parametrize(("name", "arch"), _cases())
def test_a_training_step_changes_exactly_the_trainable_parameters(pristine, name, arch):
    model = _fresh(pristine, arch)
    method = tuning.get(name)()
    method.apply(model)
    before = _snapshot(model)
    _train(model, method, steps=2 if name in ("lora", "adaptformer") else 1)
    after = _snapshot(model)
    params = dict(model.named_parameters())
    for key, value in after.items():
        changed = not torch.equal(before[key], value)
        if key in params:
            assert changed == params[key].requires_grad, key
        else:  # buffers: BatchNorm statistics move only when the backbone trains
            assert changed == (name == "full"), key
    if arch == "cnn" and name != "full":
        assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))


@pytest.mark.parametrize(
    ("name", "arch"),
    [("lora", "cnn"), ("lora", "vit"), ("oft", "cnn"), ("oft", "vit"), ("adaptformer", "vit"),
     ("vpt", "vit")],
)  # fmt: skip
def test_pretrained_forward_recovers_the_base_model_before_and_after_training(pristine, name, arch):
    model = _fresh(pristine, arch)
    images, _ = _batch()
    base = _eval_embed(copy.deepcopy(model.backbone), images)
    method = tuning.get(name)()
    method.apply(model)
    at_init = _eval_embed(model.backbone, images)
    if name == "vpt":  # prompts change the sequence from the start
        assert (at_init - base).abs().max() > 1e-4
    else:  # zero-initialized B / rotation / up-projection: the pretrained model exactly
        torch.testing.assert_close(at_init, base, rtol=0, atol=1e-6)

    _train(model, method, steps=2, lr=1e-2)
    model.train()
    method.configure(model, 1, 2)
    modes = [m.training for m in model.modules()]
    with method.pretrained_forward(model), torch.no_grad():
        inside = model.backbone(images)
    assert [m.training for m in model.modules()] == modes
    torch.testing.assert_close(inside, base, rtol=0, atol=1e-6)
    outside = _eval_embed(model.backbone, images)
    assert (outside - base).abs().max() > 1e-4


def test_other_methods_hand_over_every_backbone_parameter_as_it_is(pristine):
    model = _fresh(pristine, "vit")
    method = tuning.VPT(tokens=2)
    method.apply(model)
    weights = method.backbone_weights(model)
    expected = list(model.backbone.named_parameters())  # the prompts included
    assert [(w.name, w.parameter) for w in weights] == expected
    assert all(w.delta is None and w.value() is w.parameter for w in weights)


def test_merged_state_of_other_methods_is_a_detached_copy(pristine):
    model = _fresh(pristine, "cnn")
    state = tuning.Full().merged_backbone_state(model)
    assert state.keys() == model.backbone.state_dict().keys()
    weight = model.backbone.conv_stem.weight
    torch.testing.assert_close(state["conv_stem.weight"], weight, rtol=0, atol=0)
    with torch.no_grad():
        weight.add_(1.0)
    assert not torch.equal(state["conv_stem.weight"], weight)


@pytest.mark.parametrize("name", VIT_ONLY)
def test_wise_ft_state_is_refused_for_methods_that_add_parameters(pristine, name):
    model = _fresh(pristine, "vit")
    method = tuning.get(name)()
    method.apply(model)
    with pytest.raises(UserError, match=f"WiSE-FT does not apply to --method {name}"):
        method.merged_backbone_state(model)
