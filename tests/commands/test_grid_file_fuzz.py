"""Fuzzed ``compare --grid`` files: a one-line error and nothing created, never a traceback.

``riftune compare --grid FILE --out DIR --report-only`` runs in-process
(:func:`riftune.cli.main`) on random bytes, random YAML documents and a valid small grid with
one key's value replaced by random YAML (a string for a list, mappings, nested lists, unknown
keys, values of every type). Required: exit status 2 with one ``error:`` line and no ``DIR``
afterwards (the whole grid is checked before its folder is made), or, for a grid that is
valid after all, its folder and the error that no run finished (``--report-only`` launches
nothing).

Cases per CI run (``max_examples``): 40 random-bytes files, 40 random YAML documents and 80
mutated grids: 160.
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

from riftune.cli import main

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run
)
GRID_KEYS = ["data", "methods", "regs", "lams", "seeds", "wise_ft", "wise_ft_alphas", "shots",
             "select_seeds", "finetune", "dataset_finetune", "shots_finetune", "slurm"]  # fmt: skip
VALID_GRID = {
    "data": ["breastmnist"],
    "methods": ["full"],
    "regs": ["none", "rift[match=paired]", {"reg": "l2sp", "lams": [0.1]}],
    "lams": [1.0],
    "seeds": [0],
    "shots": [10, "all"],
    "finetune": {"epochs": 1, "img-size": 28},
    "shots_finetune": {10: {"batch-size": 8}},
}
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["breastmnist", "full", "rift", "all", "0,0.5,...,1", "epochs"])
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
    ),
    max_leaves=6,
)


NOTHING_RAN = "error: no run of the grid finished"  # a valid grid: --report-only ran nothing


def _compare(raw: bytes) -> int:
    """``compare --grid --report-only`` on ``raw``: 0 for a valid grid, else 2 after one error
    line that left no --out folder."""
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as folder:
        path, out = Path(folder) / "grid.yaml", Path(folder) / "grid"
        path.write_bytes(raw)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["compare", "--grid", str(path), "--out", str(out), "--report-only",
                           "--quiet"])  # fmt: skip
        lines = err.getvalue().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        if lines[0].startswith(NOTHING_RAN):
            return 0
        assert not out.exists(), "a refused grid left its --out folder"
        return status


@settings(FUZZ, max_examples=40)
@given(raw=st.binary(max_size=512))
def test_grid_of_random_bytes(raw):
    _compare(raw)


@settings(FUZZ, max_examples=40)
@given(document=YAML_VALUES | st.dictionaries(st.sampled_from(GRID_KEYS), YAML_VALUES, max_size=4))
def test_grid_of_random_yaml(document):
    _compare(yaml.safe_dump(document).encode())


@settings(FUZZ, max_examples=80)
@given(key=st.sampled_from([*GRID_KEYS, "unknown"]), value=YAML_VALUES)
def test_a_valid_grid_with_one_value_replaced(key, value):
    _compare(yaml.safe_dump({**VALID_GRID, key: value}).encode())


def test_the_valid_grid_passes():
    assert _compare(yaml.safe_dump(VALID_GRID).encode()) == 0


@pytest.mark.parametrize(
    "text",
    [
        "data: breastmnist\n",  # a string for a list: refused, not one job per letter
        "seeds: zero\n",
        "slurm: {partition: gpu}\n",  # SLURM settings with the local launcher
        "regs: [none]\nlams: [1]\nfinetune: {epochs: -1}\n",  # a cell's configuration
    ],
)
def test_refused_grids_create_nothing(text):
    assert _compare(text.encode()) == 2
