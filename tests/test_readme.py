"""The code blocks of README.md and of the docs run as written."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python_blocks(page: str = "README.md") -> list[str]:
    text = (REPO / page).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_the_training_loop_example():
    blocks = _python_blocks()
    assert any("RIFT(" in block and "loss.backward()" in block for block in blocks)


def test_readme_training_loop_example_runs(medmnist_dir, monkeypatch):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    example = next(b for b in _python_blocks() if "RIFT(" in b and "loss.backward()" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    # the regularizer contributed: RIFT's paired penalty is strictly positive after training
    z, cache, index = namespace["z"], namespace["cache"], namespace["index"]
    assert float(namespace["rift"](z, cache[index]).detach()) > 0.0
    # the similarity budget saw every step: 546 images, batch 32, the last partial batch dropped
    assert namespace["lam"].updates == 546 // 32 and namespace["lam"].value >= 0.0


def test_docs_python_entry_point_example_runs(medmnist_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    monkeypatch.chdir(tmp_path)
    example = next(b for b in _python_blocks("docs/cli.md") if "riftune.finetune(" in b)
    namespace: dict = {}
    exec(compile(example, "docs/cli.md", "exec"), namespace)
    metrics = namespace["metrics"]
    assert (tmp_path / "runs" / "api" / "metrics.json").is_file()
    low, high = metrics["test"]["ci"]["auc"]["low"], metrics["test"]["ci"]["auc"]["high"]
    assert low <= metrics["test"]["auc"] <= high
    assert capsys.readouterr().out.startswith(str(metrics["test"]["auc"]))
