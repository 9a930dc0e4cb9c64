"""Shared by the readers' fuzz tests: one way to damage a file's bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import strategies as st


def _mutate_bytes(data: bytes, draw: Callable) -> bytes:
    """``data`` truncated, with 1-8 bits flipped, or with a run of up to 16 bytes overwritten."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    if kind == "flip":
        for pos, bit in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)),
                                      min_size=1, max_size=8)):  # fmt: skip
            out[pos] ^= 1 << bit
    else:
        start = draw(st.integers(0, len(data) - 1))
        out[start : start + 16] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


@pytest.fixture(scope="session")
def mutate_bytes() -> Callable[[bytes, Callable], bytes]:
    """``mutate_bytes(raw, data.draw)``: ``raw`` damaged as hypothesis draws it (session-scoped,
    so ``@given`` tests may take it)."""
    return _mutate_bytes
