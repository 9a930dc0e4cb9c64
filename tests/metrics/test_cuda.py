"""The metrics on a CUDA device agree with the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from riftune.metrics import (
    StreamingCKA,
    collect,
    hessian_top_eigenvalue,
    knn_accuracy,
    linear_cka,
    sharpness,
)
from riftune.models.classifier import Classifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cka_under_autocast_and_streaming_on_cuda():
    x, y = torch.randn(300, 64), torch.randn(300, 32)
    y[:, :16] += x[:, :16]
    for debiased in (False, True):
        expected = float(linear_cka(x.double(), y.double(), debiased=debiased))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            value = linear_cka(x.cuda(), y.cuda(), debiased=debiased)
        assert value.dtype == torch.float32 and value.is_cuda
        assert float(value) == pytest.approx(expected, rel=1e-5)
        metric = StreamingCKA(debiased=debiased)
        for i in range(0, 300, 64):
            metric.update(x[i : i + 64].cuda(), y[i : i + 64].cuda())
        assert float(metric.compute()) == pytest.approx(expected, rel=1e-9)


def test_collect_with_amp_on_cuda():
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = Classifier(backbone, num_features=8, num_classes=3, pretrained_cfg={})
    items = [(torch.randn(3, 16, 16), torch.tensor(i % 3), torch.tensor(i)) for i in range(40)]
    loader = DataLoader(items, batch_size=16)
    on_cpu = collect(model, loader, "cpu")
    on_gpu = collect(model.cuda(), loader, "cuda", amp_dtype=torch.bfloat16)
    assert on_gpu.embeddings.device.type == "cpu" and on_gpu.embeddings.dtype == torch.float32
    torch.testing.assert_close(on_gpu.embeddings, on_cpu.embeddings, atol=0.05, rtol=0.05)


def _cross_entropy(model, batch):
    x, y = batch
    device = next(model.parameters()).device
    return F.cross_entropy(model(x.to(device)), y.to(device))


def test_sharpness_and_hessian_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    batches = [
        (torch.randn(12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))) for _ in range(2)
    ]
    cpu_values = (
        sharpness(model, _cross_entropy, batches, rho=0.1),
        hessian_top_eigenvalue(model, _cross_entropy, batches, iters=50, tol=1e-9),
    )
    model.cuda()
    before = [p.detach().clone() for p in model.parameters()]
    gpu_values = (
        sharpness(model, _cross_entropy, batches, rho=0.1),
        hessian_top_eigenvalue(model, _cross_entropy, batches, iters=50, tol=1e-9),
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert gpu_values == pytest.approx(cpu_values, rel=1e-6)


def test_knn_on_cuda_matches_the_cpu():
    train, test = torch.randn(500, 16), torch.randn(100, 16)
    train_labels, test_labels = (train[:, 0] > 0).long(), (test[:, 0] > 0).long()
    expected = knn_accuracy(train, train_labels, test, test_labels)
    assert (
        knn_accuracy(train.cuda(), train_labels.cuda(), test.cuda(), test_labels.cuda()) == expected
    )
