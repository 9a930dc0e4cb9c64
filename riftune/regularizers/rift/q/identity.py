"""``q="identity"``: no orthogonal map, Q = I (the interface's defaults)."""

from __future__ import annotations

from riftune.regularizers.rift.q.base import QStrategy, register_q


@register_q
class IdentityQ(QStrategy):
    """Q = I: covariance matching compares Σ̄ with Σ₀ and μ̄ with μ₀ in the original
    coordinates; paired matching compares Ẑ with R̂. No parameters, no buffers."""

    name = "identity"
    help = "'identity' (none)"
