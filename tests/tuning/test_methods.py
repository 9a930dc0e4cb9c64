"""Finetuning methods: which parameters learn, what the added modules compute, LP-FT's phases.

Backbones are randomly initialized timm models (no weights needed): EfficientNet-Lite0 (a CNN
with BatchNorm and depthwise convolutions) and a tiny ViT on 32x32 images (4 patches + class
token).
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from riftune import regularizers, tuning
from riftune.distributed import DistributedContext
from riftune.engine.step import Teacher, TrainStep
from riftune.engine.weight import ConstantWeight
from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.regularizers import PretrainedView
from riftune.regularizers.delta import default_layers

NUM_CLASSES = 3
IMG = 32
ALL_METHODS = ["adaptformer", "bitfit", "full", "linear", "lora", "lp-ft", "oft", "vpt"]
CNN_AND_VIT = ["full", "linear", "bitfit", "lora", "lp-ft", "oft"]
ADAPTERS = ["lora", "oft"]  # peft methods: zero-initialized, merged into the plain weights
VIT_ONLY = ["vpt", "adaptformer"]


def _classifier(backbone: nn.Module) -> Classifier:
    return Classifier(backbone, backbone.num_features, NUM_CLASSES, backbone.pretrained_cfg)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP threads waiting on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pristine() -> dict[str, Classifier]:
    torch.manual_seed(0)
    cnn = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=IMG)
    return {"cnn": _classifier(cnn), "vit": _classifier(vit)}


def _fresh(pristine: dict[str, Classifier], arch: str) -> Classifier:
    return copy.deepcopy(pristine[arch])


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, IMG, IMG, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return images, labels


def _train(
    model: Classifier,
    method: tuning.FinetuningMethod,
    steps: int = 2,
    lr: float = 1e-3,
    epoch: int = 0,
    epochs: int = 2,
) -> None:
    """``steps`` AdamW steps the way the engine takes them (train mode, then configure).

    Zero-initialized parts (LoRA's B, AdaptFormer's up-projection) leave their partners
    without gradient on the first step, so it takes two steps for every trainable tensor of
    those methods to move.
    """
    images, labels = _batch()
    model.train()
    method.configure(model, epoch, epochs)
    optimizer = torch.optim.AdamW(method.param_groups(model, lr, 10 * lr), weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _eval_embed(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(images)


def _numel(params) -> int:
    return sum(p.numel() for p in params)


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


# --------------------------------------------------------------------------------- registry
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


@pytest.mark.parametrize("name", VIT_ONLY)
def test_vit_only_methods_refuse_a_cnn(pristine, name):
    with pytest.raises(UserError, match=r"needs a ViT backbone.*timm:vit_"):
        tuning.get(name)().apply(_fresh(pristine, "cnn"))


# ------------------------------------------------------------------- trainable parameters
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


def test_linear_keeps_the_backbone_in_eval_mode_and_its_embeddings_pretrained(pristine):
    model = _fresh(pristine, "cnn")
    images, _ = _batch()
    reference = _eval_embed(copy.deepcopy(model.backbone), images)
    method = tuning.Linear()
    _train(model, method)
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training
    model.train()
    method.configure(model, 1, 2)
    with method.pretrained_forward(model), torch.no_grad():
        inside = model.backbone(images)
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-6)
    assert model.head.training and not model.backbone.training


def test_bitfit_trains_batchnorm_shift_but_not_scale(pristine):
    model = _fresh(pristine, "cnn")
    method = tuning.BitFit()
    method.configure(model, 0, 1)
    bn = model.backbone.bn1
    assert bn.bias.requires_grad and not bn.weight.requires_grad
    assert not model.backbone.conv_stem.weight.requires_grad
    assert method.pretrained_forward(model) is None


# --------------------------------------------------------------------------------- LP-FT
def test_lp_ft_probes_then_finetunes_at_the_right_epoch(pristine):
    model = _fresh(pristine, "cnn")
    method = tuning.LPFT()
    n_head = _numel(model.head.parameters())
    for epoch in range(6):
        model.train()
        method.configure(model, epoch, 6)
        n_trainable = _numel(p for p in model.parameters() if p.requires_grad)
        bn_training = [m.training for m in model.modules() if isinstance(m, _BatchNorm)]
        if epoch < 3:  # default: half of the epochs
            assert method.phase(epoch, 6) == "probe"
            assert n_trainable == n_head
            assert not model.backbone.training and not any(bn_training)
        else:
            assert method.phase(epoch, 6) == "finetune"
            assert n_trainable == _numel(model.parameters())
            assert model.backbone.training and all(bn_training)
    assert [tuning.LPFT(lp_epochs=1).phase(e, 4) for e in range(4)] == ["probe"] + ["finetune"] * 3
    assert tuning.LPFT().phase(0, 1) == "finetune"  # a one-epoch run has no probe phase
    with pytest.raises(UserError, match="--lp-epochs 4 leaves no finetuning epoch"):
        tuning.LPFT(lp_epochs=4).phase(0, 4)
    assert method.pretrained_forward(model) is None


@settings(max_examples=30, deadline=None)
@given(epochs=st.integers(2, 50), data=st.data())
def test_lp_ft_phase_is_probe_exactly_before_lp_epochs(epochs, data):
    lp_epochs = data.draw(st.integers(0, epochs - 1))
    phases = [tuning.LPFT(lp_epochs).phase(e, epochs) for e in range(epochs)]
    assert phases == ["probe"] * lp_epochs + ["finetune"] * (epochs - lp_epochs)
    default = [tuning.LPFT().phase(e, epochs) for e in range(epochs)]
    assert default.count("probe") == epochs // 2


# --------------------------------------------------- added modules and the pretrained function
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


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_lora_targets_linear_and_ungrouped_convolutions_only(pristine, arch):
    model = _fresh(pristine, arch)
    plain = dict(model.backbone.named_modules())
    tuning.LoRA().apply(model)
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in model.backbone.named_modules()
        if hasattr(m, "lora_A")
    }
    expected = {
        name
        for name, m in plain.items()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    }
    assert adapted == expected and adapted
    if arch == "cnn":
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in plain.values())


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_oft_targets_linear_and_one_by_one_convolutions_only(pristine, arch):
    model = _fresh(pristine, arch)
    plain = dict(model.backbone.named_modules())
    tuning.OFT().apply(model)
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in model.backbone.named_modules()
        if hasattr(m, "oft_R")
    }
    expected = {
        name
        for name, m in plain.items()
        if isinstance(m, nn.Linear)
        or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1))
    }
    assert adapted == expected and adapted
    skipped = {"cnn": "conv_stem", "vit": "patch_embed.proj"}[arch]  # k x k, k > 1
    assert skipped in plain and skipped not in adapted


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_merged_adapter_weights_load_into_the_plain_architecture(pristine, arch, name):
    model = _fresh(pristine, arch)
    method = tuning.get(name)()
    method.apply(model)
    _train(model, method, steps=1, lr=1e-2)  # B / the rotation moves off zero
    state = method.merged_backbone_state(model)
    pretrained = pristine[arch].backbone.state_dict()
    assert state.keys() == pretrained.keys()
    assert any(not torch.equal(state[k], v) for k, v in pretrained.items())
    # Compared in float64, so float32 rounding through a deep network does not hide the merge.
    images = _batch(n=2)[0].double()
    plain = copy.deepcopy(pristine[arch].backbone).double()
    plain.load_state_dict(state, strict=True)
    merged = _eval_embed(plain, images)
    adapted = _eval_embed(model.backbone.double(), images)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_lora_backbone_weights_are_the_merged_weights_under_the_plain_names(pristine, arch):
    """What L2-SP is handed: W₀ + ΔW equals peft's own merge, name for name."""
    model = _fresh(pristine, arch)
    method = tuning.LoRA()
    method.apply(model)
    _train(model, method, steps=1, lr=1e-2)  # B moves off zero: the update B A is non-zero
    weights = method.backbone_weights(model)
    plain_names = [name for name, _ in pristine[arch].backbone.named_parameters()]
    assert [w.name for w in weights] == plain_names  # no LoRA factor, plain order
    merged = method.merged_backbone_state(model)
    adapted = [w for w in weights if w.delta is not None]
    assert {w.name for w in adapted} == {
        t + ".weight" for t in tuning.lora.lora_targets(pristine[arch].backbone)
    }
    for weight in weights:
        torch.testing.assert_close(weight.value().detach(), merged[weight.name], rtol=0, atol=1e-6)
    weight = adapted[0]
    weight.value().square().sum().backward()  # differentiable in the factors, not in W₀
    layer = dict(model.backbone.named_modules())[
        "base_model.model." + weight.name.removesuffix(".weight")
    ]
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert weight.parameter.grad is None
    with model.backbone.disable_adapter():  # no update while the adapters are off
        assert weight.delta() is None and weight.value() is weight.parameter


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


# ------------------------------------------------------------------------------------ VPT
@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_vpt_token_layout_and_gradients(pristine, mode):
    model = _fresh(pristine, "vit")
    vit = model.backbone
    tokens = 3
    plain_len = vit.num_prefix_tokens + vit.patch_embed.num_patches  # 1 + 4
    method = tuning.VPT(tokens=tokens, mode=mode)
    method.apply(model)
    prompts = vit.vpt.prompts
    assert prompts.shape == (len(vit.blocks) if mode == "deep" else 1, tokens, vit.embed_dim)

    block_inputs: list[torch.Tensor] = []
    norm_inputs: list[torch.Tensor] = []
    for block in vit.blocks:
        block.register_forward_pre_hook(lambda m, a: block_inputs.append(a[0].detach()))
    vit.norm.register_forward_pre_hook(lambda m, a: norm_inputs.append(a[0].detach()))

    images, labels = _batch()
    model.train()
    method.configure(model, 0, 1)
    F.cross_entropy(model(images).logits, labels).backward()

    assert [x.shape[1] for x in block_inputs] == [plain_len + tokens] * len(vit.blocks)
    assert norm_inputs[0].shape[1] == plain_len
    prompt_slot = slice(vit.num_prefix_tokens, vit.num_prefix_tokens + tokens)
    for i, x in enumerate(block_inputs):
        expected = prompts[i if mode == "deep" else 0].detach().expand_as(x[:, prompt_slot])
        if mode == "deep" or i == 0:
            torch.testing.assert_close(x[:, prompt_slot], expected, rtol=0, atol=0)
        else:  # shallow: later blocks see the prompts' outputs of the block before
            assert not torch.allclose(x[:, prompt_slot], expected)

    assert prompts.grad is not None
    assert (prompts.grad.flatten(1).abs().sum(1) > 0).all()  # every block's prompts learn
    others = [n for n, p in vit.named_parameters() if p is not prompts and p.grad is not None]
    assert others == []

    block_inputs.clear()
    with method.pretrained_forward(model), torch.no_grad():
        model.backbone(images)
    assert [x.shape[1] for x in block_inputs] == [plain_len] * len(vit.blocks)


# ---------------------------------------------------------------------------- AdaptFormer
def test_adaptformer_block_matches_the_paper_formula(pristine):
    """x_out = x' + MLP(LN(x')) + s * ReLU(LN(x') W_down + b_down) W_up + b_up (eqs. 2-3)."""
    model = _fresh(pristine, "vit")
    method = tuning.AdaptFormer(dim=8, scale=0.5)
    method.apply(model)
    block = model.backbone.blocks[0]
    adapter = block.adaptformer
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    tokens = torch.randn(2, 5, model.backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    block.eval()
    with torch.no_grad():
        out = block(tokens)
        mid = tokens + block.attn(block.norm1(tokens))
        normed = block.norm2(mid)
        mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(normed)))
        hidden = torch.relu(normed @ adapter.down.weight.T + adapter.down.bias)
        branch = hidden @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(out, mid + mlp + 0.5 * branch, rtol=1e-5, atol=1e-5)
    assert branch.abs().max() > 1e-2


# ---------------------------------------------------------- OFT with every regularizer
@pytest.mark.parametrize("reg_name", regularizers.available())
def test_oft_trains_through_the_training_step_with_every_regularizer(pristine, reg_name):
    """The engine's own step (teacher pass with adapters off, or the cache) with each penalty:
    the rotations and the head move, the frozen weights and BatchNorm statistics do not, and
    the pretrained function is still there afterwards."""
    model = _fresh(pristine, "cnn")
    method = tuning.OFT(block_size=8)
    method.apply(model)
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(8, 3, IMG, IMG, generator=gen)
    labels = torch.arange(8) % NUM_CLASSES
    indices = torch.arange(8)
    reference = _eval_embed(model.backbone, images)
    cls = regularizers.get(reg_name)
    reg = cls(dim=model.num_features, match="paired") if reg_name == "rift" else cls()
    if reg_name == "delta":  # one early layer (16 channels) keeps its channel ablation cheap
        reg = cls(layers=default_layers(model.backbone)[:1], attention_images=2)
    reg.prepare(
        PretrainedView(
            model=model,
            train_embeddings=reference,
            train_labels=labels,
            train_batches=lambda: [(images, labels, indices)],
        )
    )
    teacher = None
    if reg.reference == "teacher" or reg.needs_feature_maps:
        teacher = Teacher(
            model,
            lambda: method.pretrained_forward(model),
            feature_layers=reg.feature_layers if reg.needs_feature_maps else None,
        )
    optimizer = torch.optim.AdamW(
        method.param_groups(model, 1e-3, 1e-3) + [{"params": list(reg.parameters())}]
    )
    step = TrainStep(
        model, reg, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        torch.amp.GradScaler("cpu", enabled=False),
        DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
        weight=ConstantWeight(1.0), grad_clip=1.0, amp_dtype=None,
        reference_cache=reference if reg.reference == "cache" else None, teacher=teacher,
    )  # fmt: skip
    before = _snapshot(model)
    model.train()
    method.configure(model, 0, 1)
    losses = [step(images, labels, indices) for _ in range(4)]
    assert all(math.isfinite(out["loss"]) for out in losses)
    assert losses[-1]["task"] < losses[0]["task"]
    if reg.has_penalty and reg_name != "none":  # the representation moved, so the penalty did
        assert losses[-1]["reg"] != losses[0]["reg"]
    after = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for key, value in after.items():
        moved = not torch.equal(before[key], value)
        assert moved == (key in trainable), key
    with method.pretrained_forward(model), torch.no_grad():
        torch.testing.assert_close(model.backbone(images), reference, rtol=0, atol=1e-6)
