"""export: a plain timm model with the run's logits (full and LoRA); predict: npz, image folder
and CSV give the probabilities of the run's own evaluation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from riftune.commands.evaluate import FinishedRun, load_finished_run
from riftune.commands.export import export_loaded, export_run, info_path, timm_state_dict
from riftune.commands.predict import predict_loaded, predict_run
from riftune.config import RunConfig
from riftune.data import (
    DatasetSplits,
    ImageTensorDataset,
    eval_loader,
    load_dataset,
    load_new_images,
)
from riftune.distributed import DistributedContext
from riftune.errors import UserError
from riftune.metrics import collect
from riftune.models import build_classifier
from riftune.report.predictions import read_predictions_csv
from riftune.runs.folder import RunDir
from riftune.tuning import VPT, AdaptFormer, Full, LoRA

REPO = Path(__file__).resolve().parents[2]
IMG = 28  # breastmnist's native size: image files written from it decode to the same pixels


def _finetune(out: Path, medmnist_dir: Path, *extra: str) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "riftune", "finetune", "--data", "breastmnist",
         "--data-root", str(medmnist_dir), "--epochs", "1", "--img-size", str(IMG),
         "--shots", "4", "--batch-size", "4", "--landscape-images", "0",
         "--hessian-iters", "0", "--head-lr", "1e-2", "--out", str(out), "--quiet", *extra],
        check=True, env=env, cwd=REPO,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, medmnist_dir):
    root = tmp_path_factory.mktemp("runs")
    return {
        "full": _finetune(root / "full", medmnist_dir),
        "lora": _finetune(root / "lora", medmnist_dir, "--method", "lora"),
    }


@pytest.fixture(scope="module")
def full_run(runs):
    """The full run rebuilt, and its own test evaluation: logits of every test image."""
    run = load_finished_run(runs["full"], "cpu")
    evaluated = collect(run.model, eval_loader(run.data.test, 128, run.ctx), "cpu")
    return run, torch.softmax(evaluated.logits.double(), 1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_export_loads_into_plain_timm_with_the_runs_logits(runs, method, tmp_path, medmnist_dir):
    out = tmp_path / "model.safetensors"
    assert export_run(runs[method], out) == (out, tmp_path / "model.json")
    info = json.loads(info_path(out).read_text())
    assert info["architecture"] == "tf_efficientnet_lite0" and info["timm_kwargs"] == {}
    assert info["num_classes"] == 2 and info["class_names"] == ["malignant", "normal, benign"]
    assert info["image_size"] == IMG and info["source"]["method"] == method
    model = timm.create_model(
        info["architecture"], num_classes=info["num_classes"], pretrained=False
    )
    model.load_state_dict(safetensors.torch.load_file(out))  # strict: every key, no extra
    model.eval()

    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=info["image_size"],
                        mean=info["mean"], std=info["std"])  # fmt: skip
    images, labels, _ = data.test.batch(range(len(data.test)))
    run = load_finished_run(runs[method], "cpu")
    with torch.no_grad():
        exported, expected = model(images), run.model.eval()(images).logits
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
    metrics = json.loads((runs[method] / "metrics.json").read_text())
    assert float((exported.argmax(1) == labels).double().mean()) == metrics["test"]["acc"]
    if method == "lora":  # the adapters were merged: the weights are no longer the pretrained ones
        pretrained = build_classifier("efficientnet_lite0", 1, img_size=IMG).backbone.state_dict()
        weights = safetensors.torch.load_file(out)
        assert not torch.equal(weights["conv_head.weight"], pretrained["conv_head.weight"])
        depthwise = "blocks.1.0.conv_dw.weight"  # LoRA does not adapt depthwise convolutions
        assert torch.equal(weights[depthwise], pretrained[depthwise])


def test_export_refuses_methods_a_plain_timm_model_cannot_hold():
    for method in (VPT(tokens=2), AdaptFormer(dim=4)):
        model = build_classifier("timm:vit_tiny_patch16_224", 2, pretrained=False, img_size=32)
        method.apply(model)
        run = types.SimpleNamespace(
            model=model,
            method=method,
            config=RunConfig.from_dict({"method": {"name": method.name}}),
        )
        with pytest.raises(
            UserError, match=f"cannot export a --method {method.name} run"
        ) as caught:
            timm_state_dict(run, classifier="head")
        assert "\n" not in str(caught.value)


def test_export_checks_the_output_name(tmp_path):
    with pytest.raises(UserError, match=r"must end in \.safetensors"):
        export_run(tmp_path, tmp_path / "model.pt")
    with pytest.raises(UserError, match="does not exist"):
        export_run(tmp_path, tmp_path / "missing" / "model.safetensors")


@pytest.mark.slow
def test_predict_npz_gives_the_runs_test_probabilities(runs, full_run, tmp_path, medmnist_dir):
    _, expected = full_run
    with np.load(medmnist_dir / "breastmnist.npz") as source:
        images, labels = source["test_images"][:10], source["test_labels"][:10]
    np.savez(tmp_path / "new.npz", test_images=images, test_labels=labels)
    out = predict_run(
        runs["full"], tmp_path / "new.npz", tmp_path / "p.csv", batch_size=3, device="cpu"
    )
    rows = read_predictions_csv(out)
    assert [(r["split"], r["index"], r["label"]) for r in rows] == [
        ("test", i, int(labels[i, 0])) for i in range(10)
    ]
    got = np.array([[r["p_malignant"], r["p_normal, benign"]] for r in rows])
    np.testing.assert_allclose(got, expected[:10], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_predict_a_medmnist_flag_from_the_command_line(runs, full_run, tmp_path, medmnist_dir):
    """``riftune predict --data breastmnist``, the README's dataset: every split of the file,
    found through the run's --data-root (no $RIFTUNE_DATA, an empty home)."""
    _, expected = full_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    env.pop("RIFTUNE_DATA", None)
    out = tmp_path / "p.csv"
    subprocess.run(
        [sys.executable, "-m", "riftune", "predict", "--run", str(runs["full"]), "--data",
         "breastmnist", "--out", str(out), "--device", "cpu"],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    rows = read_predictions_csv(out)
    with np.load(medmnist_dir / "breastmnist.npz") as source:
        labels = {split: source[f"{split}_labels"][:, 0] for split in ("train", "val", "test")}
    assert [(r["split"], r["index"], r["label"]) for r in rows] == [
        (split, i, int(label)) for split, split_labels in labels.items()
        for i, label in enumerate(split_labels)
    ]  # fmt: skip
    test = [r for r in rows if r["split"] == "test"]
    got = np.array([[r["p_malignant"], r["p_normal, benign"]] for r in test])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def _test_images(medmnist_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(medmnist_dir / "breastmnist.npz") as source:
        return source["test_images"][:count], source["test_labels"][:count, 0]


@pytest.mark.slow
def test_predict_image_folder_with_class_subfolders(full_run, tmp_path, medmnist_dir):
    run, expected = full_run
    images, labels = _test_images(medmnist_dir, 6)
    names = run.data.class_names
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "new" / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "new" / names[label] / f"img{i}.png")
    rows = read_predictions_csv(predict_loaded(run, tmp_path / "new", tmp_path / "p.csv", 4))
    by_file = {r["file"]: r for r in rows}
    assert sorted(by_file) == sorted(f"{names[label]}/img{i}.png" for i, label in enumerate(labels))
    for i, label in enumerate(labels):
        row = by_file[f"{names[label]}/img{i}.png"]
        assert row["label"] == label
        np.testing.assert_allclose(
            [row["p_malignant"], row["p_normal, benign"]], expected[i], atol=1e-6
        )
    # a flat folder: no labels
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(images[0]).save(flat / "a.png")
    rows = read_predictions_csv(predict_loaded(run, f"imagefolder:{flat}", tmp_path / "q.csv", 4))
    assert list(rows[0]) == ["file", "predicted", "p_malignant", "p_normal, benign"]


@pytest.mark.slow
def test_predict_csv_with_and_without_labels(full_run, tmp_path, medmnist_dir):
    run, expected = full_run
    images, labels = _test_images(medmnist_dir, 5)
    (tmp_path / "img").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.png")
    table = tmp_path / "new.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "diagnosis"])
        for i, label in enumerate(labels):
            writer.writerow([f"img/{i}.png", run.data.class_names[label]])
    rows = read_predictions_csv(predict_loaded(run, table, tmp_path / "p.csv", 2))
    assert [r["file"] for r in rows] == [f"img/{i}.png" for i in range(5)]
    assert [r["label"] for r in rows] == labels.tolist()
    got = np.array([[r["p_malignant"], r["p_normal, benign"]] for r in rows])
    np.testing.assert_allclose(got, expected[:5], atol=1e-6)
    named = predict_loaded(run, f"csv:{table}?image=path&label=diagnosis", tmp_path / "q.csv", 2)
    assert [r["label"] for r in read_predictions_csv(named)] == labels.tolist()
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("file\nimg/0.png\nimg/1.png\n")
    rows = read_predictions_csv(predict_loaded(run, unlabelled, tmp_path / "r.csv", 2))
    assert list(rows[0]) == ["file", "predicted", "p_malignant", "p_normal, benign"]
    np.testing.assert_allclose(
        [rows[1]["p_malignant"], rows[1]["p_normal, benign"]], expected[1], atol=1e-6
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nimg/0.png,cyst\n")
    with pytest.raises(UserError, match="'cyst' is not one of the run's classes"):
        predict_loaded(run, bad, tmp_path / "s.csv", 2)


@pytest.mark.parametrize("method", [Full(), LoRA(rank=2)])
def test_export_of_a_vit_keeps_its_image_size(method, tmp_path):
    """A ViT built for 32 px needs img_size=32 in timm.create_model: the JSON says so."""
    torch.manual_seed(0)
    model = build_classifier("timm:vit_tiny_patch16_224", 1, pretrained=False, img_size=32)
    model.reset_head(3)
    method.apply(model)
    with torch.no_grad():  # move every weight (LoRA's B starts at zero) so merging matters
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    split = ImageTensorDataset(pixels, torch.tensor([0, 1, 2, 0]), (0.5,) * 3, (0.5,) * 3)
    run = FinishedRun(
        run_dir=RunDir(tmp_path),
        config=RunConfig.from_dict(
            {
                "data": {"img_size": 32},
                "model": {"backbone": "timm:vit_tiny_patch16_224"},
                "method": {"name": method.name},
            }
        ),
        ctx=DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
        amp_dtype=None,
        model=model,
        data=DatasetSplits(split, split, split, 3, ["a", "b", "c"], "multiclass", "toy", "memory"),
        pretrained=None,
        method=method,
    )
    out = tmp_path / "vit.safetensors"
    export_loaded(run, out)
    info = json.loads(info_path(out).read_text())
    assert info["architecture"] == "vit_tiny_patch16_224" and info["timm_kwargs"] == {
        "img_size": 32
    }
    plain = timm.create_model(
        info["architecture"], num_classes=3, pretrained=False, **info["timm_kwargs"]
    )
    plain.load_state_dict(safetensors.torch.load_file(out))
    images = split.batch(range(4))[0]
    with torch.no_grad():
        torch.testing.assert_close(
            plain.eval()(images), model.eval()(images).logits, rtol=1e-5, atol=1e-5
        )


def test_unreadable_new_data_is_one_line(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images.npz").write_bytes(b"")
    np.savez(tmp_path / "labels_only.npz", test_labels=np.zeros(3, dtype=np.int64))
    cases = {
        tmp_path / "x.txt": "not a valid .npz file",
        "nothing_known": "unknown dataset 'nothing_known'; give a MedMNIST flag",
        tmp_path / "missing.csv": "does not exist",
        tmp_path / "missing.npz": "does not exist",
        tmp_path / "empty": "holds no images",
        tmp_path / "no_images.npz": "not a valid .npz file",
        tmp_path / "labels_only.npz": "no \\*_images array",
    }
    for data, message in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            load_new_images(str(data), 28, ["a", "b"], 2)
        assert "\n" not in str(caught.value)
