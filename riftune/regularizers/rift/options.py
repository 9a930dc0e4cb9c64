"""The values RIFT's options take, shared by the constructor and the command-line flags."""

from __future__ import annotations

MATCHES = ("covariance", "paired")
STATISTICS = ("batch", "ema")
REFERENCE_SOURCES = ("cache", "teacher")

# Learned Q rotates at most this many dimensions by default: in the CPU grid (RESULTS.md,
# "Learned Q of limited rank") rank 64 matched all d = 1280 dimensions on validation AUC and
# CKA at 1/20 of the parameters and a fraction of the cost (BENCHMARKS.md).
DEFAULT_Q_RANK = 64


def choice(name: str, value: str, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``, else a one-line ValueError naming them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value
