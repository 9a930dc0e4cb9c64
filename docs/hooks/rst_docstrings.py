"""Griffe extension: the reST parts of riftune's docstrings, as Markdown for mkdocstrings.

riftune's docstrings are Google style with Sphinx roles and math. Before rendering:

- ``:class:`~riftune.budget.DualAscentWeight``` (and ``:func:``, ``:meth:``, ``:mod:``,
  ``:attr:``, ``:data:``, ``:obj:``, ``:exc:``) becomes a link to the object's entry in the
  API reference when it has one, else its name as code (``~`` shows the last part only;
  relative names are looked up from the docstring's module);
- ``:math:`x``` becomes inline math and a ``.. math::`` block display math (MathJax, through
  ``pymdownx.arithmatex``; aligned when it has ``&``);
- a paragraph ending in ``::`` before an indented block (a literal block) ends in ``:``; the
  indented block is Markdown's code block already.
"""

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
INLINE_MATH = re.compile(r":math:`([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::\n\n(?=    )")
MATH_BLOCK = re.compile(r"^\.\. math::\n\n?((?:(?:    .*)?\n)+)", flags=re.MULTILINE)


def _identifier(target: str, obj: Object) -> str:
    """The full dotted path a role's target names, seen from ``obj``'s module."""
    if target.startswith("riftune"):
        return target
    module = obj.module
    if target.startswith("."):
        package = module.path if module.is_init_module else module.path.rpartition(".")[0]
        return package + target
    return f"{module.path}.{target}"


def _math_block(match: re.Match) -> str:
    body = "\n".join(line[4:] for line in match[1].rstrip("\n").split("\n")).strip("\n")
    if "&" in body:
        body = f"\\begin{{aligned}}\n{body}\n\\end{{aligned}}"
    return f"\\[\n{body}\n\\]\n\n"


def to_markdown(text: str, obj: Object) -> str:
    """``text`` with its Sphinx roles and math in the Markdown mkdocstrings renders."""

    def role(match: re.Match) -> str:
        short, target = match[1], match[2]
        shown = target.rpartition(".")[2] if short else target.lstrip(".")
        return (
            f'<autoref identifier="{_identifier(target, obj)}" optional>'
            f"<code>{shown}</code></autoref>"
        )

    text = MATH_BLOCK.sub(_math_block, text + "\n").rstrip("\n")
    text = LITERAL_BLOCK.sub(":\n\n", text)
    text = INLINE_MATH.sub(lambda m: f"\\({m[1]}\\)", text)
    return ROLE.sub(role, text)


class RstDocstrings(Extension):
    """Rewrites every docstring once the object tree is complete."""

    def on_object(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value, obj)
