"""WiSE-FT: α = 0 is the pretrained backbone, α = 1 the finetuned one, in between a lerp."""

from __future__ import annotations

import json

import pytest
import torch

from riftune.cli import main
from riftune.commands.wise_ft import interpolate, parse_alphas
from riftune.errors import UserError


def test_interpolate_is_the_weight_space_lerp():
    pre = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    ft = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(7)}
    assert torch.equal(interpolate(pre, ft, 0.0)["w"], pre["w"])
    assert torch.equal(interpolate(pre, ft, 1.0)["w"], ft["w"])
    assert torch.allclose(interpolate(pre, ft, 0.25)["w"], torch.tensor([1.0, 3.0]))
    assert int(interpolate(pre, ft, 0.5)["n"]) == 7  # counters are copied, not blended
    with pytest.raises(ValueError, match="differ"):
        interpolate(pre, {"w": ft["w"]}, 0.5)


def test_parse_alphas():
    assert parse_alphas("0,0.25,...,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("1,0") == [0.0, 1.0]
    with pytest.raises(UserError):
        parse_alphas("0,2")
    with pytest.raises(UserError):
        parse_alphas("a")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_endpoints_are_the_pretrained_and_the_finetuned_backbone(
    tmp_path, medmnist_dir, method, capsys
):
    out = tmp_path / "run"
    assert main(["finetune", "--data-root", str(medmnist_dir), "--img-size", "32", "--shots", "20",
                 "--batch-size", "16", "--epochs", "2", "--method", method, "--landscape-images", "0",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["wise-ft", "--run", str(out), "--alphas", "0,0.5,1"]) == 0
    assert "α" in capsys.readouterr().out
    rows = {row["alpha"]: row for row in json.loads((out / "wise_ft.json").read_text())["alphas"]}
    assert rows[0.0]["test.cka"] == pytest.approx(1.0, abs=1e-6)  # the pretrained embeddings
    for key in ("acc", "auc", "cka"):
        assert rows[1.0][f"test.{key}"] == pytest.approx(metrics["test"][key], abs=1e-5)
    assert rows[0.5]["test.cka"] != pytest.approx(rows[1.0]["test.cka"], abs=1e-6)
