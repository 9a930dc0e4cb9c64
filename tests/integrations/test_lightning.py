"""RegularizerCallback with the real Lightning Trainer on the CPU: BreastMNIST at 28 px, the
shipped EfficientNet-Lite0 weights, a few steps."""

from __future__ import annotations

import copy
import csv

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from riftune import RIFT
from riftune.budget import DualAscentWeight
from riftune.data import load_dataset
from riftune.errors import UserError
from riftune.integrations.lightning import RegularizerCallback
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


class Finetune(pl.LightningModule):
    """A user's module: the README's classifier, cross-entropy, AdamW; ``rift`` optional."""

    def __init__(self, rift: RegularizerCallback | None, lr: float = 1e-3, freeze_bn=True):
        super().__init__()
        self.freeze_bn = freeze_bn
        torch.manual_seed(0)  # the same new head in every run
        self.model = build_classifier("efficientnet_lite0", num_classes=2)
        self.rift, self.lr, self.grads = rift, lr, []

    def on_train_start(self):
        if self.freeze_bn:
            frozen_batchnorm(self)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        logits, z = self.model(x)
        loss = F.cross_entropy(logits, y)
        return loss if self.rift is None else loss + self.rift(self, z, index)

    def on_before_optimizer_step(self, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


@pytest.fixture(scope="module")
def data(medmnist_dir):
    cfg = build_classifier("efficientnet_lite0", num_classes=2).pretrained_cfg
    return load_dataset("breastmnist", medmnist_dir, img_size=28, mean=cfg["mean"], std=cfg["std"])


def fit(module: Finetune, data, tmp_path, steps: int = STEPS, resume=None) -> pl.Trainer:
    pl.seed_everything(0)
    loader = DataLoader(
        data.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=pl.loggers.CSVLogger(tmp_path, name="run", version=0),
        log_every_n_steps=1,
        callbacks=[] if module.rift is None else [module.rift],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, ckpt_path=resume)
    return trainer


def embeddings(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().embed(images).double()


def test_penalty_enters_the_gradient_as_lambda_times_its_own(data, tmp_path):
    """Gradients of the first step with λ = 1 minus those with λ = 0 equal ∇(paired RIFT) of
    that batch, computed here from a copy of the pretrained model and its own embeddings.
    BatchNorm trains (batch statistics), else the pretrained model is the penalty's minimum."""
    with_rift = Finetune(RegularizerCallback("rift", lam=1.0), freeze_bn=False)
    without = Finetune(RegularizerCallback("rift", lam=0.0), freeze_bn=False)
    fit(with_rift, data, tmp_path / "a", 1)
    fit(without, data, tmp_path / "b", 1)

    pl.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(data.train, batch_size=16, shuffle=True, generator=generator)
    x, _, index = next(iter(loader))
    model = build_classifier("efficientnet_lite0", num_classes=2)
    plain_train = data.train.without_augmentation()
    images = torch.stack([plain_train[int(i)][0] for i in index])
    reference = embeddings(copy.deepcopy(model), images)
    rift = RIFT(model.num_features, match="paired", q="optimal")
    rift(model.train()(x).embeddings, reference.float()).backward()

    compared = 0
    for name, param in model.named_parameters():
        difference = with_rift.grads[0][name] - without.grads[0][name]
        if param.grad is None:  # the head: RIFT's penalty does not reach it
            assert difference.abs().max() == 0
            continue
        torch.testing.assert_close(difference, param.grad, rtol=1e-3, atol=1e-5)
        compared += param.grad.abs().sum() > 0
    assert compared > 10


def test_rift_keeps_cka_higher_and_logs_penalty_and_lambda(data, tmp_path):
    """Same seed and batches: with RIFT (λ from 10 by dual ascent) linear CKA to the pretrained
    embeddings of the validation images ends higher than plain finetuning; the CSV logs hold
    each step's penalty and λ, λ_{t+1} = λ_t + D_t (ε = 0, η = 1, no averaging)."""
    val = torch.stack([data.val.without_augmentation()[i][0] for i in range(len(data.val))])
    pretrained = embeddings(build_classifier("efficientnet_lite0", num_classes=2), val)
    weight = DualAscentWeight(0.0, lr=1.0, ema=0.0, initial=10.0)
    rift, plain = Finetune(RegularizerCallback("rift", lam=weight)), Finetune(None)
    fit(rift, data, tmp_path / "rift")
    fit(plain, data, tmp_path / "plain")

    cka_rift = float(linear_cka(pretrained, embeddings(rift.model, val)))
    cka_plain = float(linear_cka(pretrained, embeddings(plain.model, val)))
    assert cka_rift > cka_plain + 0.05, (cka_rift, cka_plain)

    with open(tmp_path / "rift" / "run" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("riftune/penalty_step")]
    penalties = [float(r["riftune/penalty_step"]) for r in rows]
    lams = [float(r["riftune/lam_step"]) for r in rows]
    assert len(rows) == STEPS and all(0 <= p <= 2 for p in penalties) and penalties[-1] > 0
    expected = [10.0]
    for penalty in penalties[:-1]:
        expected.append(expected[-1] + penalty)
    assert lams == pytest.approx(expected, rel=1e-6)
    assert weight.value == pytest.approx(expected[-1] + penalties[-1], rel=1e-6)


def test_a_resumed_fit_reads_lambda_and_cache_from_the_checkpoint(data, tmp_path):
    """Resumed from a Lightning checkpoint, the callback has the first fit's cache (a refill
    from the finetuned weights would differ) and its λ after one dual step."""
    first = RegularizerCallback("rift", lam=DualAscentWeight(0.0, lr=1.0))
    fit(Finetune(first, freeze_bn=False), data, tmp_path / "a", 1).save_checkpoint(
        tmp_path / "one.ckpt"
    )
    resumed = RegularizerCallback("rift", lam=DualAscentWeight(0.0, lr=1.0))
    fit(Finetune(resumed, freeze_bn=False), data, tmp_path / "b", 2, tmp_path / "one.ckpt")
    assert torch.equal(resumed.regularization.cache, first.regularization.cache)
    assert resumed.regularization.cache.shape == (len(data.train), 1280)
    with open(tmp_path / "b" / "run" / "version_0" / "metrics.csv") as f:
        lams = [float(r["riftune/lam_step"]) for r in csv.DictReader(f) if r["riftune/lam_step"]]
    assert lams == [pytest.approx(first.regularization.lam)] and lams[0] > 0


def test_teacher_only_regularizers_are_refused(data, tmp_path):
    with pytest.raises(UserError, match="teacher pass"):
        fit(Finetune(RegularizerCallback("cka")), data, tmp_path, steps=1)
