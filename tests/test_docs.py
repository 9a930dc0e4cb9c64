"""The documentation site's pages agree with the code and README they are taken from."""

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _docstring_diff(module_path: str) -> str:
    """The indented block after ``The diff to an existing script (...)::`` in a module docstring."""
    source = (REPO / module_path).read_text()
    docstring = source.split('"""', 2)[1]
    block = inspect.cleandoc(docstring).split("::\n\n", 1)[1]
    lines = []
    for line in block.split("\n"):
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip("\n")


@pytest.mark.parametrize(
    "module_path", ["riftune/integrations/lightning.py", "riftune/integrations/hf_trainer.py"]
)
def test_frameworks_page_shows_the_diff_of_the_module_docstring(module_path):
    page = (REPO / "docs" / "frameworks.md").read_text()
    diffs = re.findall(r"```diff\n(.*?)\n```", page, flags=re.DOTALL)
    expected = _docstring_diff(module_path)
    assert expected.count("\n") >= 5 and expected.startswith(("+", "-"))
    assert expected in diffs


def test_docs_include_the_readme_training_loop_example():
    readme = (REPO / "README.md").read_text()
    section = re.search(
        r"<!-- --8<-- \[start:example\] -->\n(.*?)<!-- --8<-- \[end:example\] -->",
        readme,
        flags=re.DOTALL,
    )
    assert section is not None
    assert "RIFT(" in section[1] and "loss.backward()" in section[1]
    for page in ("index.md", "own-loop.md"):
        assert '--8<-- "README.md:example"' in (REPO / "docs" / page).read_text()


def _rst_docstrings():
    spec = importlib.util.spec_from_file_location(
        "rst_docstrings", REPO / "docs" / "hooks" / "rst_docstrings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_roles_and_math_become_markdown():
    import griffe

    rst = _rst_docstrings()
    package = griffe.Module("integrations", filepath=REPO / "riftune/integrations/__init__.py")
    package.parent = griffe.Module("riftune")
    text = (
        "Uses :class:`~riftune.budget.DualAscentWeight` and :mod:`.lightning`.\n\n"
        ".. math::\n\n    a &= b\\\\\n    c &= d\n\nThe diff::\n\n    +x = 1\n"
    )
    assert rst.to_markdown(text, package) == (
        'Uses <autoref identifier="riftune.budget.DualAscentWeight" optional>'
        "<code>DualAscentWeight</code></autoref> and "
        '<autoref identifier="riftune.integrations.lightning" optional>'
        "<code>lightning</code></autoref>.\n\n"
        "\\[\n\\begin{aligned}\na &= b\\\\\nc &= d\n\\end{aligned}\n\\]\n\n"
        "The diff:\n\n    +x = 1"
    )
