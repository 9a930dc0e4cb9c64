"""A small real training run: the shipped EfficientNet-Lite0 ImageNet weights on BreastMNIST.

Plain finetuning and every RIFT variant (both matches × every q) with the same seed and the default λ = 1; the test
prints test-set CKA to the pretrained embeddings for each, and asserts that paired matching
keeps the representation closer to the pretrained one than plain finetuning does.
"""

from __future__ import annotations

import pytest

from riftune.config import finetune_parser
from riftune.engine import finetune

# 546 training images at 64 px, batch 32: 3 epochs = 51 steps per run.
BUDGET = ["--data", "breastmnist", "--img-size", "64", "--batch-size", "32", "--epochs", "3",
          "--seed", "0", "--landscape-images", "0", "--quiet"]  # fmt: skip
# One worker runs the module-scoped training runs once for all tests here (pytest -n --dist
# loadgroup); the seven runs together take longer than the suite's per-test timeout.
pytestmark = [pytest.mark.xdist_group("rift_training"), pytest.mark.timeout(2700)]

VARIANTS = {
    "plain": ["--reg", "none"],
    **{
        f"covariance/{q}": ["--reg", "rift", "--rift-match", "covariance", "--rift-q", q]
        for q in ("identity", "learned", "optimal")
    },
    **{
        f"paired/{q}": ["--reg", "rift", "--rift-match", "paired", "--rift-q", q]
        for q in ("identity", "learned", "optimal")
    },
}


@pytest.fixture(scope="module")
def test_cka(tmp_path_factory, medmnist_dir) -> dict[str, float]:
    root = tmp_path_factory.mktemp("rift-training")
    results = {}
    for name, flags in VARIANTS.items():
        args = finetune_parser().parse_args(
            BUDGET
            + flags
            + ["--data-root", str(medmnist_dir), "--out", str(root / name.replace("/", "-"))]
        )
        results[name] = finetune(args)["test"]["cka"]
    print("\ntest-set linear CKA to the pretrained embeddings (BreastMNIST, seed 0):")
    for name, value in results.items():
        print(f"  {name:22s} {value:.4f}")
    return results


@pytest.mark.slow
def test_every_variant_trains_and_reports_cka(test_cka):
    assert set(test_cka) == set(VARIANTS)
    assert all(0.0 < value <= 1.0 for value in test_cka.values())


@pytest.mark.slow
@pytest.mark.parametrize("q", ["identity", "optimal"])
def test_paired_rift_keeps_cka_higher_than_plain_finetuning(test_cka, q):
    assert test_cka[f"paired/{q}"] > test_cka["plain"]
