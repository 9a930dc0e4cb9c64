"""Taking a run folder: a resumed run must keep the interrupted run's training options (the
check names each one that differs), evaluation options may change, and a refusal on the main
rank is one UserError."""

from __future__ import annotations

import contextlib

import pytest
import torch

from riftune.config import RunConfig, write_config
from riftune.distributed import DistributedContext
from riftune.engine.run_claim import check_same_training, claim_run_dir, on_main
from riftune.errors import UserError
from riftune.models import build_classifier
from riftune.runs.folder import RunDir

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _config(out, **sections) -> RunConfig:
    return RunConfig.from_dict(
        {"regularizer": {"name": "rift", "lam": 0.1}, **sections, "output": {"out": str(out)}}
    )


@pytest.fixture(scope="module")
def model():
    return build_classifier("timm:test_convnext", 2, pretrained=False, img_size=32)


def test_a_resume_with_other_training_options_is_refused_naming_each(tmp_path, model):
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    write_config(_config(run_dir.root), run_dir.config)
    changed = _config(
        run_dir.root, training={"lr": 1e-3, "channels_last": "off"}, regularizer={"name": "cka"}
    )
    with pytest.raises(UserError) as error:
        check_same_training(run_dir, changed, model)
    message = str(error.value)
    assert message.startswith("--resume needs the training options of the interrupted run")
    for name in ("training.lr", "regularizer.name", "training.channels_last (give "):
        assert name in message
    same_training = _config(run_dir.root, evaluation={"eval_batch_size": 7})
    check_same_training(run_dir, same_training, model)  # evaluation options may change


def test_claiming_writes_the_config_and_holds_the_lock_until_closed(tmp_path, model):
    config = _config(tmp_path / "run")
    run_dir = RunDir(tmp_path / "run")
    with contextlib.ExitStack() as lock:
        claim_run_dir(run_dir, config, model, CPU, lock)
        assert run_dir.config.is_file() and run_dir.lock.exists()
        with pytest.raises(UserError, match="is being written by pid"):
            claim_run_dir(run_dir, config, model, CPU, contextlib.ExitStack())


def test_a_user_error_on_the_main_rank_is_raised_as_one():
    def refuse():
        raise UserError("no")

    with pytest.raises(UserError, match=r"^no$"):
        on_main(CPU, refuse)
    on_main(CPU, lambda: None)
