"""--logger wandb / mlflow: W&B in offline mode (its run file read back record by record) and
MLflow in a local file store (read back with its own client), alone and in a finetuning run
that also has --tensorboard."""

from __future__ import annotations

import csv
import json
import struct
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from riftune.cli import main
from riftune.config.sections import OutputConfig
from riftune.engine.loggers import MLflowLogger, WandbLogger
from riftune.errors import UserError
from riftune.runs.folder import RunDir

BLOCK = 32768  # the W&B run file is a LevelDB-style log: 32 KiB blocks of 7-byte-headed chunks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path):
    """Every protobuf ``Record`` of a ``run-*.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_run(root, wait: float = 30.0):
    """(history rows keyed by metric name with ``_step``, config) of the offline run in root.

    wandb-core writes the file from its own process; on a loaded machine (CI, two workers) its
    last blocks landed after ``finish()`` returned, so the file is read again until its
    history is there, for at most ``wait`` seconds."""
    (path,) = (root / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait
    records = wandb_records(path)
    while not any(r.WhichOneof("record_type") == "history" for r in records):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        records = wandb_records(path)
    history, config = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})  # fmt: skip
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config |= {i.key: json.loads(i.value_json) for i in updates}
    return history, config


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


CONFIG = {"training": {"lr": 0.001, "epochs": 2}, "regularizer": {"name": "rift"}}


def test_wandb_offline_run_holds_the_values_and_the_config(tmp_path, offline):
    logger = WandbLogger(RunDir(tmp_path), CONFIG, resume=False)
    for step in (1, 2, 3):
        logger.log_scalars(step, {"train/loss": 1.0 / step, "note": "skipped", "flag": True})
    logger.log_scalars(3, {"val/auc": 0.75})
    logger.close()
    history, config = wandb_run(tmp_path)
    losses = [(row["_step"], row["train/loss"]) for row in history if "train/loss" in row]
    assert losses == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [row["val/auc"] for row in history if "val/auc" in row] == [0.75]
    assert not any("note" in row or "flag" in row for row in history)
    assert config["training"] == CONFIG["training"]
    assert config["regularizer"] == CONFIG["regularizer"]


def test_mlflow_file_store_holds_metrics_and_flat_parameters_and_resumes(tmp_path, offline):
    run_dir = RunDir(tmp_path)
    logger = MLflowLogger(run_dir, CONFIG, resume=False)
    logger.log_scalars(1, {"train/loss": 0.5, "note": "skipped"})
    logger.close()
    resumed = MLflowLogger(run_dir, CONFIG, resume=True)
    resumed.log_scalars(2, {"train/loss": 0.25})
    resumed.close()
    assert resumed.run_id == logger.run_id
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    run = client.get_run(logger.run_id)
    assert set(run.data.metrics) == {"train/loss"}
    assert run.data.params == {
        "training.lr": "0.001", "training.epochs": "2", "regularizer.name": "rift"
    }  # fmt: skip


def test_tensorboard_flag_and_logger_names_combine_each_once():
    assert OutputConfig(logger="wandb, tensorboard").loggers == ("wandb", "tensorboard")
    assert OutputConfig(logger="mlflow", tensorboard=True).loggers == ("mlflow", "tensorboard")
    assert OutputConfig(logger="tensorboard", tensorboard=True).loggers == ("tensorboard",)
    assert OutputConfig().loggers == ()


def test_an_unknown_tracker_is_one_line_before_anything_is_created(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "--data", "breastmnist", "--logger", "wandb,neptune",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not out.exists()
    assert err.startswith("error: --logger") and "'neptune'" in err and "mlflow" in err


@pytest.mark.slow
def test_a_run_logs_the_same_steps_epochs_and_config_to_every_tracker(
    tmp_path, medmnist_dir, offline, monkeypatch
):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    out = tmp_path / "run"
    flags = ["--img-size", "32", "--shots", "16", "--batch-size", "16", "--epochs", "2",
             "--landscape-images", "16", "--hessian-iters", "2", "--reg", "rift"]  # fmt: skip
    code = main(["finetune", "--data", "breastmnist", *flags, "--out", str(out), "--quiet",
                 "--logger", "wandb,mlflow", "--tensorboard"])  # fmt: skip
    assert code == 0
    with open(out / "steps.csv") as f:
        steps = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    with open(out / "history.csv") as f:
        epochs = [float(r["val_auc"]) for r in csv.DictReader(f)]
    test_auc = json.loads((out / "metrics.json").read_text())["test"]["auc"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert len(steps) >= 2 and len(epochs) == 2

    history, wandb_config = wandb_run(out)
    assert [(r["_step"], r["train/loss"]) for r in history if "train/loss" in r] == steps
    assert [r["val/auc"] for r in history if "val/auc" in r] == epochs
    assert [r["test/auc"] for r in history if "test/auc" in r] == [test_auc]
    assert wandb_config["training"] == config["training"]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tensorboard = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert tensorboard == [(step, pytest.approx(value)) for step, value in steps]
    (text,) = events.Tensors("config/text_summary")
    logged = text.tensor_proto.string_val[0].decode().removeprefix("```yaml\n").removesuffix("```")
    assert yaml.safe_load(logged)["training"] == config["training"]

    client = MlflowClient((out / "mlruns").as_uri())
    run_id = (out / "mlruns" / "run-id").read_text().strip()
    loss = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == steps
    assert [m.value for m in client.get_metric_history(run_id, "val/auc")] == epochs
    params = client.get_run(run_id).data.params
    assert params["training.lr"] == str(config["training"]["lr"])
    assert params["regularizer.name"] == "rift"


@pytest.mark.parametrize(
    ("opener", "module", "extra"),
    [(WandbLogger, "wandb", "wandb"), (MLflowLogger, "mlflow.tracking", "mlflow")],
)
def test_a_missing_tracker_package_is_a_one_line_hint(tmp_path, monkeypatch, opener, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UserError, match=rf"pip install riftune\[{extra}\]") as caught:
        opener(RunDir(tmp_path / "run"), CONFIG, resume=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()
