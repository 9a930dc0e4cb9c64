"""Expected calibration error of a classifier's top-label confidence."""

from __future__ import annotations

import torch


def _is_probability(scores: torch.Tensor) -> bool:
    return bool(
        (scores >= 0).all()
        and torch.allclose(scores.sum(1), torch.ones_like(scores[:, 0]), atol=1e-4)
    )


def expected_calibration_error(
    probs_or_logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool | None = None,
) -> float:
    r"""Top-label expected calibration error with equal-width confidence bins.

    With confidence cᵢ = maxₖ pᵢₖ, prediction ŷᵢ = argmaxₖ pᵢₖ and bins
    B_m = {i : cᵢ ∈ ((m−1)/M, m/M]} (the first bin also holds cᵢ = 0):

    .. math::

        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{n}\,
            \Big|\frac{1}{|B_m|}\sum_{i\in B_m}[\hat y_i = y_i]
            - \frac{1}{|B_m|}\sum_{i\in B_m} c_i\Big|

    (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks",
    ICML 2017), with M = ``n_bins`` = 15 by default. Empty bins contribute nothing. Computed in
    float64 on the whole split given (nothing is reduced across ranks).

    Args:
        probs_or_logits: class probabilities or logits. Shape: (n, k), k ≥ 2.
        labels: true classes in [0, k). Shape: (n,).
        n_bins: M, the number of equal-width bins on [0, 1].
        from_logits: ``True`` applies a softmax first, ``False`` takes the rows as
            probabilities; ``None`` (default) decides by the rows: non-negative rows that sum
            to 1 (within 1e-4) are probabilities, anything else logits.

    Returns:
        The ECE in [0, 1].
    """
    scores = torch.as_tensor(probs_or_logits).detach().double()
    labels = torch.as_tensor(labels).reshape(-1).to(scores.device)
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            "expected_calibration_error expects scores of shape (n, k), k ≥ 2, and n labels; "
            f"got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if scores.shape[0] == 0 or n_bins < 1:
        raise ValueError(
            f"expected_calibration_error needs n ≥ 1 and n_bins ≥ 1; got {scores.shape[0]}, {n_bins}"
        )
    if from_logits is None:
        from_logits = not _is_probability(scores)
    probs = torch.softmax(scores, dim=1) if from_logits else scores
    confidence, prediction = probs.max(1)
    correct = (prediction == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=scores.device)
    bins = torch.bucketize(confidence, edges[1:-1], right=False)
    gap = torch.zeros(n_bins, dtype=torch.float64, device=scores.device)
    gap.index_add_(0, bins, correct - confidence)
    return float(gap.abs().sum() / scores.shape[0])
