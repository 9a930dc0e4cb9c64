"""collect / collect_embeddings: eval mode, no gradients, order by index, modes restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from riftune.metrics import collect, collect_embeddings
from riftune.models.classifier import Classifier


def _classifier() -> Classifier:
    backbone = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.ReLU()
    )
    model = Classifier(backbone, num_features=6, num_classes=3, pretrained_cfg={})
    with torch.no_grad():  # running statistics that differ from any batch's own
        backbone[2].running_mean.uniform_(-1, 1)
        backbone[2].running_var.uniform_(0.5, 2)
    return model


def _items(n: int = 23) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    images = torch.randn(n, 3, 4, 4)
    return [(images[i], torch.tensor(i % 3), torch.tensor(i)) for i in range(n)]


def _expected(model: Classifier, items):
    model.eval()
    with torch.no_grad():
        out = model(torch.stack([image for image, _, _ in items]))
    return out


def test_collect_runs_in_eval_mode_sorted_by_index_and_restores_modes():
    model, items = _classifier(), _items()
    model.train()
    model.backbone[2].eval()  # a deliberately frozen BatchNorm must stay in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    loader = DataLoader(items, batch_size=5, shuffle=True)
    got = collect(model, loader, "cpu")
    assert {name: m.training for name, m in model.named_modules()} == modes
    expected = _expected(model, items)
    assert torch.equal(got.indices, torch.arange(len(items)))
    assert torch.equal(got.labels, torch.arange(len(items)) % 3)
    torch.testing.assert_close(got.embeddings, expected.embeddings)
    torch.testing.assert_close(got.logits, expected.logits)
    for t in (got.embeddings, got.logits):
        assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad
    assert got.labels.dtype == torch.int64 and got.indices.dtype == torch.int64


def test_collect_drops_duplicate_indices():
    model, items = _classifier(), _items(9)
    order = [3, 0, 8, 1, 2, 3, 4, 5, 6, 7, 0]  # padding repeats samples, as DistributedSampler does
    got = collect(model, DataLoader([items[i] for i in order], batch_size=4), "cpu")
    assert torch.equal(got.indices, torch.arange(9))
    torch.testing.assert_close(got.embeddings, _expected(model, items).embeddings)


def test_collect_under_bfloat16_autocast_is_close_to_float32():
    model, items = _classifier(), _items()
    loader = DataLoader(items, batch_size=8)
    full = collect(model, loader, "cpu")
    low = collect(model, loader, "cpu", amp_dtype=torch.bfloat16)
    assert low.embeddings.dtype == torch.float32
    torch.testing.assert_close(low.embeddings, full.embeddings, atol=0.1, rtol=0.05)


def test_collect_embeddings_with_a_bound_method_uses_eval_mode_and_restores_it():
    model, items = _classifier(), _items()
    model.train()
    got = collect_embeddings(model.embed, DataLoader(items, batch_size=6), "cpu")
    assert model.training and model.backbone[2].training
    assert got.logits is None
    torch.testing.assert_close(got.embeddings, _expected(model, items).embeddings)


def test_collect_embeddings_with_any_callable():
    items = _items(10)
    got = collect_embeddings(lambda images: images.flatten(1)[:, :4] * 2, DataLoader(items), "cpu")
    expected = torch.stack([image.flatten()[:4] * 2 for image, _, _ in items])
    torch.testing.assert_close(got.embeddings, expected)


def test_bad_loaders_raise():
    model = _classifier()
    with pytest.raises(ValueError, match="images, labels, indices"):
        collect(model, [(torch.randn(2, 3, 4, 4), torch.zeros(2))], "cpu")
    with pytest.raises(ValueError, match="no batches"):
        collect(model, [], "cpu")


def test_collect_keeps_multilabel_targets_as_rows():
    model, items = _classifier(), _items(11)
    targets = (torch.arange(11 * 3).reshape(11, 3) % 4 == 0).long()
    items = [(image, targets[i], index) for i, (image, _, index) in enumerate(items)]
    got = collect(model, DataLoader(items, batch_size=4, shuffle=True), "cpu")
    assert torch.equal(got.labels, targets)
    torch.testing.assert_close(got.logits, _expected(model, items).logits)
