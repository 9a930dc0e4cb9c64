"""AppendingCSV: history.csv / steps.csv grow row by row and survive a resume without duplicates."""

from __future__ import annotations

import subprocess
import sys

from riftune.report.history import AppendingCSV, read_history_csv, write_history_csv


def _rows(n: int, start: int = 1) -> list[dict]:
    return [{"step": i, "loss": 1.0 / i, "lr": 1e-4 * i} for i in range(start, start + n)]


def test_each_append_is_on_disk_and_earlier_bytes_stay(tmp_path):
    path = tmp_path / "steps.csv"
    log = AppendingCSV(path)
    assert not path.exists()
    previous = b""
    for count, row in enumerate(_rows(4), start=1):
        log.append(row)
        data = path.read_bytes()
        assert data.startswith(previous) and len(data) > len(previous)  # appended, not rewritten
        previous = data
        # another process reads every finished row while the writer is still alive
        seen = subprocess.run(
            [sys.executable, "-c", f"import csv; print(len(list(csv.DictReader(open({str(path)!r})))))"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert int(seen) == count
    assert read_history_csv(path) == _rows(4)
    reference = tmp_path / "reference.csv"
    write_history_csv(_rows(4), reference)
    assert path.read_bytes() == reference.read_bytes()  # the same file write_history_csv makes


def test_resume_cuts_back_to_the_checkpoint_rows(tmp_path):
    path = tmp_path / "history.csv"
    log = AppendingCSV(path)
    for row in _rows(5):
        log.append(row)
    checkpointed = _rows(3)  # the crash came after row 5, the last checkpoint after row 3
    resumed = AppendingCSV(path, rows=checkpointed)
    assert read_history_csv(path) == checkpointed
    redone = [{"step": 4, "loss": 0.3, "lr": 0.5}, {"step": 5, "loss": 0.2, "lr": 0.6}]
    for row in redone:
        resumed.append(row)
    assert read_history_csv(path) == checkpointed + redone
    assert [r["step"] for r in read_history_csv(path)] == [1, 2, 3, 4, 5]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_new_column_widens_the_header(tmp_path):
    path = tmp_path / "history.csv"
    log = AppendingCSV(path, rows=[{"epoch": 1, "val_auc": 0.7}])
    log.append({"epoch": 2, "val_auc": 0.8, "val_cka": 0.9})
    log.append({"epoch": 3, "val_auc": None})
    assert read_history_csv(path) == [
        {"epoch": 1, "val_auc": 0.7},
        {"epoch": 2, "val_auc": 0.8, "val_cka": 0.9},
        {"epoch": 3},
    ]
    assert path.read_text().splitlines()[0] == "epoch,val_auc,val_cka"
    assert log.rows[-1] == {"epoch": 3, "val_auc": None}


def test_a_fresh_start_removes_a_stale_file(tmp_path):
    path = tmp_path / "steps.csv"
    write_history_csv(_rows(3), path)
    AppendingCSV(path, rows=[])
    assert not path.exists()
