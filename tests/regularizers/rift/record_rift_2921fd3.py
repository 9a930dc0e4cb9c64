"""Record what RIFT as of commit 2921fd3 (one 885-line module) computes, for the compat test.

Run once from the repository root (it reads the old module with ``git show``):

    python tests/regularizers/rift/record_rift_2921fd3.py

and it writes ``rift_2921fd3.json`` beside itself: for every match × q × stats (learned Q of all
d dimensions and of rank 4), the constructor's arguments, the inputs, the state dict after
fitting and one training call, the loss and gradients in eval mode, and the loss and state
after one more training call. float64 throughout; JSON keeps every float exactly.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import riftune.regularizers.base as base

REV = "2921fd3"
HERE = Path(__file__).resolve().parent
D = 5
VARIANTS = [
    {"match": "covariance", "q": q, "stats": s, "q_rank": r}
    for q, r in (("identity", 64), ("learned", None), ("learned", 4), ("optimal", 64))
    for s in ("batch", "ema")
] + [
    {"match": "paired", "q": q, "stats": "batch", "q_rank": r}
    for q, r in (("identity", 64), ("learned", None), ("learned", 4), ("optimal", 64))
]
OPTIONS = {"mean_weight": 0.4, "momentum": 0.3, "eigh_every": 2}


def old_module():
    source = subprocess.run(
        ["git", "show", f"{REV}:riftune/regularizers/rift.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"rift_{REV}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    register = base.register
    base.register = lambda cls: cls  # "rift" is registered by the current package already
    try:
        spec.loader.exec_module(module)
    finally:
        base.register = register
    return module


def listed(state: dict) -> dict:
    return {k: {"shape": list(v.shape), "values": v.flatten().tolist()} for k, v in state.items()}


def record(module, variant: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(30, D, generator=gen, dtype=torch.float64) * 2 + 1
    z = torch.randn(6, D, generator=gen, dtype=torch.float64)
    reference = torch.randn(6, D, generator=gen, dtype=torch.float64)
    reg = module.RIFT(D, **variant, **OPTIONS).double().fit_reference(features)
    if variant["q"] == "learned":
        with torch.no_grad():
            u = reg.learned_rotation.reflectors
            u.copy_(torch.randn(u.shape, generator=gen, dtype=torch.float64))
    paired = variant["match"] == "paired"

    def call(x):
        return reg(x, reference) if paired else reg(x)

    call(z + 0.5)  # a training call: moves the running estimates (EMA) and the refresh counter
    state = listed(reg.state_dict())
    reg.eval()
    x = z.clone().requires_grad_(True)
    loss = call(x)
    loss.backward()
    grads = {"z": x.grad.flatten().tolist()}
    if variant["q"] == "learned":
        grads["reflectors"] = reg.learned_rotation.reflectors.grad.flatten().tolist()
    reg.train()
    with torch.no_grad():
        train_loss = call(z - 0.25)
    return {
        "kwargs": {**variant, **OPTIONS},
        "z": z.flatten().tolist(),
        "reference": reference.flatten().tolist(),
        "state": state,
        "eval_loss": loss.item(),
        "grads": grads,
        "train_loss": train_loss.item(),
        "state_after_train": listed(reg.state_dict()),
    }


def main() -> None:
    module = old_module()
    records = [record(module, v, seed) for seed, v in enumerate(VARIANTS)]
    out = HERE / f"rift_{REV}.json"
    out.write_text(json.dumps({"rev": REV, "dim": D, "records": records}, indent=None) + "\n")
    print(f"wrote {len(records)} records to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
