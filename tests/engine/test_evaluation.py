"""Evaluating a split and the final evaluation, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from riftune.config import RunConfig
from riftune.data import eval_loader, load_dataset
from riftune.distributed import DistributedContext
from riftune.engine.evaluation import evaluate_split, final_metrics, pretrained_embeddings
from riftune.metrics import linear_cka
from riftune.models import build_classifier

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def setup(medmnist_dir):
    torch.manual_seed(0)
    model = build_classifier("timm:test_convnext", 1, pretrained=False, img_size=32)
    norm = model.pretrained_cfg
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=32,
                        mean=tuple(norm["mean"]), std=tuple(norm["std"]), shots=8)  # fmt: skip
    model.reset_head(data.num_classes)
    pretrained = pretrained_embeddings(model, data, 64, CPU, None)
    with torch.no_grad():  # move the model away from its "pretrained" self
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval(), data, pretrained


def test_a_split_is_scored_as_sklearn_and_cka_as_the_metric(setup):
    model, data, pretrained = setup
    result = evaluate_split(model, eval_loader(data.test, 50, CPU), pretrained.test, CPU, None)
    with torch.no_grad():
        logits = torch.cat([model(x).logits for x, _, _ in eval_loader(data.test, 64, CPU)])
        embeddings = torch.cat([model.embed(x) for x, _, _ in eval_loader(data.test, 64, CPU)])
    labels = data.test.labels.numpy()
    probs = logits.softmax(-1).numpy()
    assert result.acc == pytest.approx(float(np.mean(probs.argmax(1) == labels)))
    assert result.auc == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-9)
    expected_cka = linear_cka(pretrained.test.embeddings.double(), embeddings.double())
    assert result.cka == pytest.approx(float(expected_cka), rel=1e-9)
    loss = torch.nn.functional.cross_entropy(logits, data.test.labels).item()
    assert result.loss == pytest.approx(loss, rel=1e-5)


def test_final_evaluation_adds_intervals_and_skips_what_is_switched_off(setup):
    model, data, pretrained = setup
    config = RunConfig.from_dict(
        {"evaluation": {"landscape_images": 0, "bootstrap_resamples": 50}, "data": {"shots": 8}}
    )
    final = final_metrics(model, data, pretrained, config, CPU, None)
    test = final.metrics["test"]
    assert (
        "sharpness" not in test and "hessian_top_eig" not in test and "robust" not in final.metrics
    )
    assert test["ci"]["resamples"] == 50
    assert test["ci"]["auc"]["low"] <= test["auc"] <= test["ci"]["auc"]["high"]
    assert final.test.collected.logits.shape == (len(data.test), data.num_classes)
