"""Evaluating a split and the final evaluation, against independent computations."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from sklearn.metrics import roc_auc_score

from riftune.cli import main
from riftune.config import RunConfig
from riftune.data import eval_loader, load_dataset
from riftune.distributed import DistributedContext
from riftune.engine.evaluation import evaluate_split, final_metrics, pretrained_embeddings
from riftune.metrics import collect, knn_accuracy, linear_cka
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
    unused = functools.partial(build_classifier, "timm:test_convnext", 1, pretrained=False)
    final = final_metrics(model, data, pretrained, unused, config, CPU, None)
    test = final.metrics["test"]
    assert (
        "sharpness" not in test and "hessian_top_eig" not in test and "robust" not in final.metrics
    )
    assert test["ci"]["resamples"] == 50
    assert test["ci"]["auc"]["low"] <= test["auc"] <= test["ci"]["auc"]["high"]
    assert final.test.collected.logits.shape == (len(data.test), data.num_classes)


def _transfer_knn(classifier, transfer: str, data_root, img_size: int, shots: int) -> float:
    """k-NN accuracy of ``classifier``'s embeddings on ``transfer``, as --transfer-data scores it."""
    norm = classifier.pretrained_cfg
    other = load_dataset(transfer, data_root=data_root, img_size=img_size,
                         mean=tuple(norm["mean"]), std=tuple(norm["std"]), seed=0, shots=shots)  # fmt: skip
    train, test = (collect(classifier, eval_loader(split, 64, CPU), "cpu")
                   for split in (other.train, other.test))  # fmt: skip
    return knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels, k=20)


def test_transfer_data_compares_with_the_pretrained_file_weights(tmp_path, medmnist_dir):
    """--transfer-data's pretrained reference is the backbone of --pretrained-file, not the
    ImageNet weights, in ``finetune`` and ``evaluate``: a linear probe keeps that backbone, so
    it retains exactly 1."""
    torch.manual_seed(0)
    imagenet = build_classifier("efficientnet_lite0", 1)
    weights = {
        key: value + 0.5 * value.std() * torch.randn_like(value) if value.ndim == 4 else value
        for key, value in imagenet.backbone.state_dict().items()
    }  # every convolution moved, BatchNorm statistics kept
    weights_file = tmp_path / "perturbed.safetensors"
    safetensors.torch.save_file(weights, weights_file)
    out = tmp_path / "run"
    code = main(["finetune", "--data", "breastmnist", "--data-root", str(medmnist_dir),
                 "--img-size", "32", "--shots", "20", "--batch-size", "16", "--epochs", "1",
                 "--method", "linear", "--pretrained-file", str(weights_file),
                 "--transfer-data", "pneumoniamnist", "--transfer-shots", "15",
                 "--landscape-images", "0", "--hessian-iters", "0", "--bootstrap-resamples", "0",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    transfer = json.loads((out / "metrics.json").read_text())["transfer"]
    from_file = build_classifier("efficientnet_lite0", 1, pretrained_file=weights_file)
    expected = _transfer_knn(from_file, "pneumoniamnist", medmnist_dir, 32, shots=15)
    assert transfer["knn_acc_pretrained"] == pytest.approx(expected, abs=1e-9)
    assert transfer["knn_acc_pretrained"] != pytest.approx(
        _transfer_knn(imagenet, "pneumoniamnist", medmnist_dir, 32, shots=15), abs=1e-9
    )  # so the ImageNet weights would have given another number
    assert transfer["knn_acc"] == transfer["knn_acc_pretrained"] and transfer["retained"] == 1.0
    assert transfer["linear_probe_acc"] == transfer["linear_probe_acc_pretrained"]
    assert main(["evaluate", "--run", str(out), "--quiet"]) == 0  # rebuilds the same reference
    assert json.loads((out / "evaluation.json").read_text())["transfer"] == transfer
