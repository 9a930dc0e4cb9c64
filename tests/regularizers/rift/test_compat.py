"""RIFT as a package against RIFT as it was (commit 2921fd3, one module), for every variant.

``rift_2921fd3.json`` was written by ``record_rift_2921fd3.py`` from the old module: for every
match × q × stats (learned Q of all d dimensions and of rank 4) its state dict after fitting
and one training call, and what it computed next. The current module must load that state
dict (strictly; paired matching's unread d×d ``ref_cov`` is dropped, and Q's tensors, then the
module's own, are now under ``q.``: :data:`RENAMED`) and compute the same losses, gradients and
updated state, to float64 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from riftune.regularizers.rift import RIFT

FIXTURE = json.loads((Path(__file__).parent / "rift_2921fd3.json").read_text())
DIM = FIXTURE["dim"]
#: the keys of Q's tensors then (the module's own) and now (the Q strategy's, under ``q.``)
RENAMED = {
    "learned_rotation.reflectors": "q.rotation.reflectors",
    "ref_eigvals": "q.ref_eigvals",
    "spectral_target": "q.spectral_target",
    "spectral_age": "q.spectral_age",
}
RECORDS = {"{match}/{q}/{stats}/rank={q_rank}".format(**r["kwargs"]): r for r in FIXTURE["records"]}


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under today's keys."""
    return {RENAMED.get(key, key): value for key, value in state.items()}


def tensors(listed: dict) -> dict[str, torch.Tensor]:
    dtypes = {"ref_count": torch.long, "spectral_age": torch.long}
    return {
        key: torch.tensor(value["values"], dtype=dtypes.get(key, torch.float64)).reshape(
            value["shape"]
        )
        for key, value in listed.items()
    }


def rows(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, DIM)


def test_the_fixture_covers_every_variant():
    kinds = {
        (r["kwargs"]["match"], r["kwargs"]["q"], r["kwargs"]["stats"]) for r in RECORDS.values()
    }
    expected = {
        ("covariance", q, s) for q in ("identity", "learned", "optimal") for s in ("batch", "ema")
    }
    expected |= {("paired", q, "batch") for q in ("identity", "learned", "optimal")}
    assert kinds == expected
    assert {r["kwargs"]["q_rank"] for r in RECORDS.values() if r["kwargs"]["q"] == "learned"} == {
        None,
        4,
    }


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_old_state_dicts_load_and_give_the_same_losses_and_gradients(name):
    record = RECORDS[name]
    kwargs = record["kwargs"]
    old_state = tensors(record["state"])
    reg = RIFT(DIM, **kwargs).double()
    reg.load_state_dict(old_state)  # strict: every other key must match exactly
    assert reg.fitted
    new_keys = set(reg.state_dict())
    expected = renamed(old_state)
    if kwargs["match"] == "paired":
        assert new_keys == set(expected) - {"ref_cov"}
    else:
        assert new_keys == set(expected)
    for key, value in reg.state_dict().items():
        assert torch.equal(value, expected[key]), key

    z, reference = rows(record["z"]), rows(record["reference"])
    paired = kwargs["match"] == "paired"

    def call(x):
        return reg(x, reference) if paired else reg(x)

    reg.eval()
    x = z.clone().requires_grad_(True)
    loss = call(x)
    loss.backward()
    assert loss.item() == pytest.approx(record["eval_loss"], rel=1e-12, abs=1e-14)
    torch.testing.assert_close(x.grad, rows(record["grads"]["z"]), rtol=1e-10, atol=1e-13)
    if kwargs["q"] == "learned":
        torch.testing.assert_close(
            reg.q.rotation.reflectors.grad.flatten(),
            torch.tensor(record["grads"]["reflectors"], dtype=torch.float64),
            rtol=1e-10,
            atol=1e-13,
        )
    reg.train()
    with torch.no_grad():
        train_loss = call(z - 0.25)
    assert train_loss.item() == pytest.approx(record["train_loss"], rel=1e-12, abs=1e-14)
    after = renamed(tensors(record["state_after_train"]))
    for key, value in reg.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=1e-12, atol=1e-14, msg=key)
