"""RIFT's covariance matching (batch statistics) from Σ₀'s low-rank factor against the d×d form.

Σ₀ of N images has rank N − 1; when n + N − 1 < d the loss is computed from n×n and n×(N − 1)
products (``low_rank_covariance_gap``) instead of the d×d difference (the only form before
2026-12-04, kept for larger N). This times the penalty's forward and backward alone both ways,
interleaved in one process (CPU ms per call, one thread, median over rounds), on
EfficientNet-Lite0's embeddings (shipped weights) of real BreastMNIST training images at 28 px:
Σ₀ from the first N, the batch the first n. Also prints each form's relative error against
the d×d form in float64:

    python benchmarks/covariance_low_rank.py [--rows 100,546] [--batch 32] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from riftune.data import load_dataset
from riftune.metrics.embeddings import collect_embeddings
from riftune.models import build_classifier
from riftune.regularizers.rift import RIFT
from riftune.regularizers.rift.covariance import CovarianceMatching


@contextlib.contextmanager
def dense_form(enabled: bool = True) -> Iterator[None]:
    """Inside the block (when ``enabled``) RIFT's covariance loss takes the d×d difference:
    the low-rank form is switched off."""
    low_rank = CovarianceMatching._low_rank_reference
    if enabled:
        CovarianceMatching._low_rank_reference = lambda *args: None
    try:
        yield
    finally:
        CovarianceMatching._low_rank_reference = low_rank


VARIANTS = {"q=identity": {"q": "identity"}, "q=learned rank=64": {"q": "learned", "q_rank": 64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,546", help="N, reference images (comma list)")
    parser.add_argument("--batch", type=int, default=32, help="n")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=28, mean=cfg["mean"], std=cfg["std"])
    embeddings = collect_embeddings(model.embed, DataLoader(data.train, batch_size=256), "cpu")
    features = embeddings.embeddings
    z0 = features[: args.batch] + 0.05 * torch.randn(args.batch, features.shape[1])
    torch.set_num_threads(1)
    regs, exact = {}, {}
    for rows in (int(r) for r in args.rows.split(",")):
        for name, kwargs in VARIANTS.items():
            reg = RIFT(features.shape[1], match="covariance", stats="batch", **kwargs)
            regs[(rows, name)] = reg.fit_reference(features[:rows])
            wide = RIFT(features.shape[1], match="covariance", stats="batch", **kwargs).double()
            wide.load_state_dict(reg.state_dict())
            with dense_form():
                exact[(rows, name)] = wide(z0.double()).item()

    def calls(reg: RIFT, form: str, count: int) -> tuple[float, float]:
        with dense_form(form == "d×d"):
            start = time.process_time()
            for _ in range(count):
                z = z0.clone().requires_grad_()
                loss = reg(z)
                loss.backward()
            return (time.process_time() - start) / count * 1000, loss.item()

    times = {(key, form): [] for key in regs for form in ("d×d", "low rank")}
    values = {}
    for round_ in range(args.rounds + 1):
        forms = ("d×d", "low rank") if round_ % 2 else ("low rank", "d×d")
        for key, reg in regs.items():
            for form in forms:
                ms, value = calls(reg, form, args.calls if round_ else 2)
                if round_:  # round 0 warms up
                    times[(key, form)].append(ms)
                values[(key, form)] = value
    d = features.shape[1]
    print(
        f"RIFT covariance matching, batch statistics: forward + backward, d = {d}, n = "
        f"{args.batch}, CPU ms per call (1 thread, median of {args.rounds} interleaved rounds)"
    )
    print("| N | variant | d×d form | low rank | low rank / d×d | error: d×d | error: low rank |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for rows, name in regs:
        dense = statistics.median(times[((rows, name), "d×d")])
        low = statistics.median(times[((rows, name), "low rank")])
        errors = [
            abs(values[((rows, name), form)] - exact[(rows, name)]) / exact[(rows, name)]
            for form in ("d×d", "low rank")
        ]
        print(
            f"| {rows} | {name} | {dense:.2f} | {low:.2f} | {low / dense:.2f} | "
            f"{errors[0]:.1e} | {errors[1]:.1e} |"
        )


if __name__ == "__main__":
    main()
