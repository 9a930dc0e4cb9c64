"""What RIFT's penalty costs on its own, and how often it waits for the device: per variant.

For each teacher-free RIFT variant at d = 768 (ViT-B/16) and 2048 (ResNet-50), n = 64: the
forward and backward of the penalty alone (median of REPEATS timed calls after warm-up,
synchronized around each call), and the host synchronizations of one call, counted with
``torch.cuda.set_sync_debug_mode("warn")`` (CUDA only; each ``.item()``, ``bool(tensor)``
or solver error check that blocks the host). With ``--host-solvers`` the small symmetric
eigenproblems and QR factorizations run on the CPU instead (one copy each way), to see
whether that beats the device solvers' own latency:

    python benchmarks/penalty_syncs.py --device cuda [--host-solvers] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from riftune.regularizers.rift import RIFT

VARIANTS = [
    {"match": "covariance", "q": "identity"},
    {"match": "covariance", "q": "learned"},
    {"match": "covariance", "q": "optimal"},
    {"match": "covariance", "q": "optimal", "stats": "ema"},
    {"match": "paired", "q": "identity"},
    {"match": "paired", "q": "learned"},
    {"match": "paired", "q": "optimal"},
]
REPEATS = 30


def on_host(solver):
    """``solver`` run on a CPU copy of its input, its outputs moved back (differentiable)."""

    def run(a, *args, **kwargs):
        out = solver(a.cpu(), *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.to(a.device)
        return type(out)([t.to(a.device) for t in out])

    return run


def penalty_call(rift: RIFT, z: torch.Tensor, reference: torch.Tensor) -> None:
    z.grad = None
    loss = rift(z, reference) if rift.match == "paired" else rift(z)
    loss.backward()


def measure(variant: dict, dim: int, n: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    rift = RIFT(dim, **variant).to(device).train()
    scales = torch.linspace(2.0, 0.05, dim)
    rift.fit_reference((torch.randn(4 * dim, dim) * scales).to(device))
    z = (torch.randn(n, dim, device=device) * scales.to(device)).requires_grad_()
    reference = torch.randn(n, dim, device=device) * scales.to(device)
    for _ in range(5):
        penalty_call(rift, z, reference)
    syncs = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                penalty_call(rift, z, reference)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        penalty_call(rift, z, reference)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    label = " ".join(f"{k}={v}" for k, v in variant.items())
    return {"variant": label, "d": dim, "n": n, "ms": statistics.median(times), "syncs": syncs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--host-solvers", action="store_true")
    parser.add_argument("--dims", default="768,2048")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.host_solvers:
        for name in ("eigh", "eigvalsh", "qr"):
            setattr(torch.linalg, name, on_host(getattr(torch.linalg, name)))
    rows = [
        measure(variant, int(dim), args.batch, device)
        for dim in args.dims.split(",")
        for variant in VARIANTS
    ]
    where = "host solvers" if args.host_solvers else "device solvers"
    print(f"| variant ({where}) | d | n | penalty fwd+bwd (ms) | host syncs per call |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['d']} | {row['n']} | {row['ms']:.3f} | {row['syncs']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": str(device), "host_solvers": args.host_solvers, "rows": rows},
                      handle, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
