"""Fuzzed configuration files: ``finetune --config`` and ``riftune.tune``'s YAML file load or
end in one ``error:`` line, never a traceback.

``finetune --config FILE --print-config`` runs in-process (:func:`riftune.cli.main`), so each
example reads the file, resolves the configuration and stops before training. The files are
random bytes, today's nested configuration and an old run folder's flat one with a value,
a section or a new key replaced by random YAML (wrong types, lists, mappings, unknown keys),
and random YAML documents. Required: exit status 0, or 2 with one line ``error: ...`` on
stderr. ``riftune.tune`` gets the same random bytes (which it can never run) and its reader,
:meth:`~riftune.strength.config.TuneConfig.from_mapping`, random YAML of its settings: a
:class:`TuneConfig` or a one-line :class:`~riftune.errors.UserError`.

Cases per CI run (``max_examples``): 40 random-bytes files for each of finetune and tune,
60 mutated nested configurations, 40 mutated flat ones, 60 random tune settings: 240.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import riftune
from riftune.cli import main
from riftune.config import RunConfig
from riftune.errors import UserError
from riftune.strength.config import TuneConfig

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run
)
FLAT = Path(__file__).resolve().parents[1] / "fixtures" / "v1_interrupted_run" / "config.yaml"

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["full", "rift", "lora", "breastmnist", "1e-3", "on", "off"])
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=6,
)


def _run_cli(argv: list[str]) -> int:
    """``riftune ARGV`` in-process: its exit status; an error is one ``error:`` line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    if status != 0:
        lines = err.getvalue().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    return status


def _finetune_config(raw: bytes) -> int:
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as folder:
        path = Path(folder) / "run.yaml"
        path.write_bytes(raw)
        return _run_cli(["finetune", "--config", str(path), "--print-config"])


def _mutated(config: dict, draw) -> dict:
    """``config`` with one value, one section or one new key replaced by random YAML."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    key = draw(st.sampled_from(sorted(config)))
    where = draw(st.sampled_from(["value", "section", "new key"]))
    if where == "value" and isinstance(config[key], dict) and config[key]:
        config[key][draw(st.sampled_from(sorted(config[key])))] = draw(YAML_VALUES)
    elif where == "new key":
        target = config[key] if isinstance(config[key], dict) else config
        target[draw(st.text(max_size=8) | st.integers())] = draw(YAML_VALUES)
    else:
        config[key] = draw(YAML_VALUES)
    return config


@settings(FUZZ, max_examples=40)
@given(raw=st.binary(max_size=512))
def test_finetune_config_of_random_bytes(raw):
    _finetune_config(raw)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_finetune_config_of_a_mutated_nested_configuration(data):
    _finetune_config(
        yaml.safe_dump(_mutated(RunConfig.from_dict({}).to_dict(), data.draw)).encode()
    )


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_finetune_config_of_a_mutated_flat_configuration(data):
    _finetune_config(yaml.safe_dump(_mutated(yaml.safe_load(FLAT.read_text()), data.draw)).encode())


def test_the_unmutated_configurations_load():
    assert _finetune_config(yaml.safe_dump(RunConfig.from_dict({}).to_dict()).encode()) == 0
    assert _finetune_config(FLAT.read_bytes()) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: 3\nepoch: 5\n", r"unknown keys \['epoch'\]"),  # a typo is not dropped
        ("training:\n  epoch: 5\n", r"training: unknown keys \['epoch'\]"),
        ("lam: abc\n", r"lam: .abc. is not a number"),
        ("riftune_config: 2\ntraining: 5\n", "training must be a mapping"),
        ("method: {name: [lora]}\n", r"unknown method \['lora'\]"),
        ("[" * 5000 + "]" * 5000, "is not valid YAML"),
        ("riftune_config: 2\n1: {}\nx: {}\n", r"unknown sections \[1, 'x'\]"),  # mixed keys
        ("training: {1: 2, x: 3}\n", r"unknown keys \[1, 'x'\]"),
        ("reg: rift\nrift_q: []\n", r"q must be one of .*; got \[\]"),  # an old flat file
    ],
)
def test_config_findings(text, message, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        main(["finetune", "--config", str(path), "--print-config", "--debug"])


# ---------------------------------------------------------------------------- tune


@settings(FUZZ, max_examples=40)
@given(raw=st.binary(max_size=512))
def test_tune_of_a_random_bytes_file_is_a_user_error(raw):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as folder:
        path = Path(folder) / "tune.yaml"
        path.write_bytes(raw)
        with pytest.raises(UserError) as caught:
            riftune.tune(path)
        assert "\n" not in str(caught.value)


def test_tune_command_refuses_a_random_bytes_config_before_its_folder(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xff\xfe\x00\xd8 not text")
    assert _run_cli(["tune", "--out", str(tmp_path / "study"), "--config", str(path)]) == 2
    assert not (tmp_path / "study").exists()


TUNE_KEYS = ["out", "finetune", "methods", "regularizers", "ladder", "budgets", "lams", "folds",
             "cv_below", "tolerance", "z", "prune_margin", "jobs", "launcher", "slurm", "quiet"]  # fmt: skip
VALID_TUNE = {"out": "study", "finetune": {"data": "breastmnist", "epochs": 1}, "folds": 2}


@settings(FUZZ, max_examples=60)
@given(changes=st.dictionaries(st.sampled_from([*TUNE_KEYS, "unknown"]), YAML_VALUES, max_size=3))
def test_tune_settings_of_random_yaml(changes):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as folder:
        path = Path(folder) / "tune.yaml"
        path.write_text(yaml.safe_dump({**VALID_TUNE, **changes}))
        try:
            settings_ = TuneConfig.from_mapping(path)
        except UserError as error:
            assert "\n" not in str(error) and str(error).strip()
            return
        assert isinstance(settings_.out, str) and all(
            isinstance(f, str) for f in settings_.finetune
        )


def test_valid_tune_settings_load(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**VALID_TUNE, "lams": [0.1, 1], "methods": "full,lora"}))
    loaded = TuneConfig.from_mapping(path)
    assert loaded.lams == (0.1, 1.0) and loaded.methods == ("full", "lora") and loaded.folds == 2
    assert loaded.finetune == ("--data", "breastmnist", "--epochs", "1")
