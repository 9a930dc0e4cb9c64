"""RegularizedTrainer, the real Hugging Face Trainer on the CPU: BreastMNIST at 28 px, the
shipped EfficientNet-Lite0 weights, a few steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments

from riftune import RIFT
from riftune.budget import DualAscentWeight
from riftune.data import load_dataset
from riftune.integrations import Regularization
from riftune.integrations.hf_trainer import STATE_FILE, RegularizedTrainer
from riftune.metrics import linear_cka
from riftune.models import build_classifier

STEPS = 4


def frozen_batchnorm(model, mode: bool = True):
    """Train mode with BatchNorm on its running statistics (riftune finetune's default), so the
    embeddings evaluated afterwards depend on the weights alone."""
    nn.Module.train(model, mode)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


class ImageClassifier(nn.Module):
    """A user's model in the Trainer's terms: keyword inputs, a dict with loss and outputs."""

    def __init__(self, freeze_bn: bool = True):
        super().__init__()
        self.freeze_bn = freeze_bn
        torch.manual_seed(0)  # the same new head in every run
        self.model = build_classifier("efficientnet_lite0", num_classes=2)
        self.seen: list[torch.Tensor] = []

    def train(self, mode: bool = True):
        return frozen_batchnorm(self, mode) if self.freeze_bn else super().train(mode)

    def forward(self, pixel_values, labels=None):
        if self.training:
            self.seen.append(pixel_values)
        logits, z = self.model(pixel_values)
        out = {"logits": logits, "embeddings": z}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class Items(Dataset):
    """riftune's (image, label, index) triples as the dicts the Trainer collates."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image, label, index = self.split[i]
        return {"pixel_values": image, "labels": int(label), "index": int(index)}


class Gradients(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in model.model.named_parameters()})


@pytest.fixture(scope="module")
def data(medmnist_dir):
    cfg = build_classifier("efficientnet_lite0", num_classes=2).pretrained_cfg
    return load_dataset("breastmnist", medmnist_dir, img_size=28, mean=cfg["mean"], std=cfg["std"])


def train(regularization, data, tmp_path, steps=STEPS, resume=None, freeze_bn=True, **args):
    model, gradients = ImageClassifier(freeze_bn), Gradients()
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **({"save_strategy": "no", "per_device_train_batch_size": 16} | args),
    )
    trainer = RegularizedTrainer(
        model=model,
        args=arguments,
        train_dataset=Items(data.train),
        regularization=regularization,
        callbacks=[gradients],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, gradients.grads


def embeddings(model, images):
    with torch.no_grad():
        return model.eval().embed(images).double()


def test_penalty_enters_the_gradient_as_lambda_times_its_own(data, tmp_path):
    """First-step gradients with λ = 1 minus those with λ = 0 equal ∇(paired RIFT) of the batch
    the model saw, against a pretrained copy's embeddings of those images. BatchNorm trains
    (batch statistics), else the pretrained model is the penalty's minimum."""
    with_rift, grads_rift = train(
        Regularization("rift", lam=1.0), data, tmp_path / "a", 1, None, False
    )
    _, grads_zero = train(Regularization("rift", lam=0.0), data, tmp_path / "b", 1, None, False)

    x = with_rift.model.seen[0]
    model = build_classifier("efficientnet_lite0", num_classes=2)
    reference = embeddings(copy.deepcopy(model), x)
    RIFT(model.num_features, match="paired", q="optimal")(
        model.train()(x).embeddings, reference.float()
    ).backward()
    compared = 0
    for name, param in model.named_parameters():
        difference = grads_rift[0][name] - grads_zero[0][name]
        if param.grad is None:  # the head: RIFT's penalty does not reach it
            assert difference.abs().max() == 0
            continue
        torch.testing.assert_close(difference, param.grad, rtol=1e-3, atol=1e-5)
        compared += param.grad.abs().sum() > 0
    assert compared > 10


def test_rift_keeps_cka_higher_and_logs_penalty_and_lambda(data, tmp_path):
    """Same seed and batches: RIFT (λ from 10 by dual ascent, ε = 0, η = 1, no averaging, so
    λ_{t+1} = λ_t + D_t) ends with higher linear CKA to the pretrained validation embeddings
    than the plain Trainer; Trainer.log's history holds each step's penalty and λ."""
    val = torch.stack([data.val.without_augmentation()[i][0] for i in range(len(data.val))])
    pretrained = embeddings(build_classifier("efficientnet_lite0", num_classes=2), val)
    weight = DualAscentWeight(0.0, lr=1.0, ema=0.0, initial=10.0)
    rift, _ = train(Regularization("rift", lam=weight), data, tmp_path / "rift")
    plain, _ = train(Regularization("none"), data, tmp_path / "plain")

    cka_rift = float(linear_cka(pretrained, embeddings(rift.model.model, val)))
    cka_plain = float(linear_cka(pretrained, embeddings(plain.model.model, val)))
    assert cka_rift > cka_plain + 0.05, (cka_rift, cka_plain)

    logs = [entry for entry in rift.state.log_history if "riftune_penalty" in entry]
    penalties = [entry["riftune_penalty"] for entry in logs]
    assert len(logs) == STEPS and all(0 <= p <= 2 for p in penalties) and penalties[-1] > 0
    expected = [10.0]
    for penalty in penalties[:-1]:
        expected.append(expected[-1] + penalty)
    assert [entry["riftune_lam"] for entry in logs] == pytest.approx(expected, rel=1e-6)


def test_a_resumed_run_reads_lambda_and_cache_from_the_checkpoint(data, tmp_path):
    first = Regularization("rift", lam=DualAscentWeight(0.0, lr=1.0))
    train(first, data, tmp_path, 1, freeze_bn=False, save_strategy="steps", save_steps=1)
    assert (tmp_path / "checkpoint-1" / STATE_FILE).is_file()
    resumed = Regularization("rift", lam=DualAscentWeight(0.0, lr=1.0))
    trainer, _ = train(resumed, data, tmp_path, 2, resume=True, freeze_bn=False)
    assert torch.equal(resumed.cache, first.cache)
    logged = [e["riftune_lam"] for e in trainer.state.log_history if "riftune_lam" in e]
    assert logged[-1] == pytest.approx(first.lam) and first.lam > 0


def test_under_gradient_accumulation_the_term_counts_once_per_step(data, tmp_path):
    """L2-SP at the pretrained weights: Ω's gradient is 2r·θ_head (r = 0.1) and 0 on the
    backbone. Two micro-batches per step must add λ∇Ω once, not twice."""
    args = {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 8}
    _, with_l2sp = train(Regularization("l2sp", lam=1.0), data, tmp_path / "a", 1, **args)
    _, without = train(Regularization("l2sp", lam=0.0), data, tmp_path / "b", 1, **args)
    head = ImageClassifier().model.head
    for name, param in head.named_parameters():
        difference = with_l2sp[0][f"head.{name}"] - without[0][f"head.{name}"]
        torch.testing.assert_close(difference, 2 * 0.1 * param.detach(), rtol=1e-4, atol=1e-7)
    stem = "backbone.conv_stem.weight"
    torch.testing.assert_close(with_l2sp[0][stem], without[0][stem], rtol=1e-5, atol=1e-7)
