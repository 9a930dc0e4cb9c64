"""The RIFT module (rift/regularizer.py): gradients, numerical safety, mixed precision, fitting,
the state dict, input and option checks and the riftune protocol, over every variant.

Shared NumPy references and helpers are fixtures in conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import special_ortho_group

from riftune.regularizers.base import PretrainedView, StepInputs, get
from riftune.regularizers.rift import RIFT

QS = ["identity", "learned", "optimal"]
VARIANTS = [("covariance", q, s) for q in QS for s in ("batch", "ema")] + [
    ("paired", q, "batch") for q in QS
]


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
def test_gradients_match_finite_differences(match, q, stats, make_data, build, call):
    features, z, reference = make_data(5, 4, seed=11)
    reg = build(4, features, q, match=match, stats=stats, mean_weight=0.4)
    reg.eval()  # keep the running estimate fixed across gradcheck's evaluations
    zt = torch.tensor(z, requires_grad=True)
    inputs = (zt, reg.q.rotation.reflectors) if q == "learned" else (zt,)
    rt = torch.tensor(reference)

    def loss(zz, *_):
        return call(reg, zz, rt)

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_rotation_property():
    reg = RIFT(5, q="learned")
    assert torch.equal(reg.rotation, torch.eye(5))  # starts at the identity
    assert torch.equal(RIFT(3).rotation, torch.eye(3))
    with pytest.raises(ValueError, match="stores no rotation"):
        _ = RIFT(3, q="optimal").rotation


def test_optimal_losses_ignore_a_rotated_reference(make_data, build):
    features, z, reference = make_data(6, 7, seed=8)
    rot = special_ortho_group.rvs(7, random_state=3)
    zt = torch.tensor(z)
    cov = build(7, features, "optimal", mean_weight=0.5)(zt)
    cov_rot = build(7, features @ rot, "optimal", mean_weight=0.5)(zt)
    np.testing.assert_allclose(cov.item(), cov_rot.item(), rtol=1e-9)
    paired = RIFT(7, match="paired", q="optimal", mean_weight=0.5).double()
    np.testing.assert_allclose(
        paired(zt, torch.tensor(reference)).item(),
        paired(zt, torch.tensor(reference @ rot)).item(),
        rtol=1e-8,  # singular values from a Gram matrix's eigenvalues: ~1e-9 apart here
    )
    # the identity variants do see the rotation
    ident = build(7, features, "identity")(zt)
    assert abs(build(7, features @ rot, "identity")(zt).item() - ident.item()) > 1e-3


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 9),
    d=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    w=st.sampled_from([0.0, 0.5]),
)
def test_properties_random_batches(n, d, seed, w, make_data, build, call):
    """Optimal ≤ learned (any Q) and ≤ identity; covariance ignores translation."""
    features, z, reference = make_data(n, d, seed=seed % 10_000, n_ref=d + 3)
    zt, rt = torch.tensor(z), torch.tensor(reference)
    shift = torch.tensor(np.random.default_rng(seed).normal(size=d) * 10)
    for match in ("covariance", "paired"):
        losses = {
            q: call(build(d, features, q, match=match, seed=seed, mean_weight=w), zt, rt).item()
            for q in QS
        }
        tol = 1e-9 * (1 + losses["identity"])
        assert losses["optimal"] <= losses["learned"] + tol
        assert losses["optimal"] <= losses["identity"] + tol
        if match == "paired" and w == 0:
            assert losses["identity"] <= 4 + 1e-9  # two unit-norm matrices
    no_mean = build(d, features, "identity")
    np.testing.assert_allclose(no_mean(zt).item(), no_mean(zt + shift).item(), rtol=1e-7)


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
@pytest.mark.parametrize("case", ["n2", "rank_deficient", "constant_features", "constant_batch"])
def test_finite_values_and_gradients(match, q, stats, case, call):
    torch.manual_seed(0)
    d = 6
    z = {
        "n2": torch.randn(2, d),
        "rank_deficient": torch.randn(5, 2) @ torch.randn(2, d),
        "constant_features": torch.cat([torch.randn(4, 3), torch.ones(4, 3)], 1),
        "constant_batch": torch.ones(4, d),
    }[case]
    features = torch.cat([torch.randn(10, 3), torch.full((10, 3), 2.0)], 1)
    reg = RIFT(d, match=match, q=q, stats=stats, mean_weight=0.5).fit_reference(features)
    z = z.clone().requires_grad_(True)
    loss = call(reg, z, z.detach() * 2 + 1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    if q == "learned":
        assert torch.isfinite(reg.q.rotation.reflectors.grad).all()


@pytest.mark.parametrize(("match", "q"), [(m, q) for m in ("covariance", "paired") for q in QS])
def test_bf16_autocast_input_gives_float32_accurate_loss(match, q, make_data, build, call):
    features, z, reference = make_data(16, 24, seed=12)
    reg = build(24, features, q, match=match, dtype=torch.float32)
    exact = build(24, features, q, match=match, dtype=torch.float64)
    if q == "learned":
        with torch.no_grad():
            exact.q.rotation.reflectors.copy_(reg.q.rotation.reflectors.double())
        if match == "covariance":
            exact.ref_cov.copy_(reg.ref_cov.double())  # same float32-rounded Σ₀
    z16 = torch.tensor(z).bfloat16()
    r16 = torch.tensor(reference).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call(reg, z16, r16)
    expected = call(exact, z16.double(), r16.double())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), expected.item(), rtol=2e-5, atol=1e-6)


def test_streaming_fit_equals_one_shot_and_numpy(np_cov, make_data):
    features, _, _ = make_data(4, 6, n_ref=90)
    one = RIFT(6, q="optimal", stats="ema").double().fit_reference(torch.tensor(features))
    chunks = (torch.tensor(c) for c in np.array_split(features, 7))
    streamed = RIFT(6, q="optimal", stats="ema").double().fit_reference(chunks)
    for name, buf in one.named_buffers():
        torch.testing.assert_close(buf, dict(streamed.named_buffers())[name], rtol=1e-12, atol=0)
    sigma0 = np_cov(features)
    np.testing.assert_allclose(one.ref_cov.numpy(), sigma0, rtol=1e-12)
    np.testing.assert_allclose(one.ref_mean.numpy(), features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(one.ref_cov_sq_norm.item(), np.sum(sigma0**2), rtol=1e-12)
    np.testing.assert_allclose(one.ref_trace.item(), np.trace(sigma0), rtol=1e-12)
    np.testing.assert_allclose(
        one.q.ref_eigvals.numpy(), np.sort(np.linalg.eigvalsh(sigma0))[::-1], atol=1e-12
    )
    assert one.ref_count.item() == 90
    np.testing.assert_allclose(one.running_cov.numpy(), sigma0, rtol=1e-12)


def test_fit_reference_starts_a_rank_k_q_at_the_top_principal_directions(np_cov, make_data, call):
    features, z, reference = make_data(40, 8, seed=3)
    reg = RIFT(8, match="paired", q="learned", q_rank=4).double()
    assert reg.q.rotation.reflectors.shape == (8, 4)
    reg.fit_reference(torch.tensor(features))
    _, vectors = np.linalg.eigh(np_cov(features))
    top = vectors[:, ::-1][:, :2]
    u = reg.q.rotation.reflectors.detach().numpy()
    np.testing.assert_allclose(np.abs(u[:, 0::2].T @ top), np.eye(2), atol=1e-8)
    np.testing.assert_allclose(u[:, 0::2], u[:, 1::2])
    torch.testing.assert_close(reg.rotation.detach(), torch.eye(8).double(), rtol=0, atol=1e-12)
    # at Q = I every variant's loss equals Q = identity's
    zt, rt = torch.tensor(z), torch.tensor(reference)
    identity = RIFT(8, match="paired", q="identity").double()
    assert call(reg, zt, rt).item() == pytest.approx(call(identity, zt, rt).item(), rel=1e-12)


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
def test_state_dict_round_trip(match, q, stats, make_data, build, call):
    features, z, reference = make_data(6, 5)
    reg = build(5, features, q, match=match, stats=stats, dtype=torch.float32)
    zt, rt = torch.tensor(z).float(), torch.tensor(reference).float()
    call(reg, zt, rt)  # moves the running estimate away from Σ₀
    state = reg.state_dict()
    expected_keys = {"ref_count", "ref_mean", "ref_cov_sq_norm", "ref_trace"}
    expected_keys |= {"ref_cov"} if match == "covariance" else set()  # paired never reads Σ₀
    expected_keys |= {"running_cov", "running_mean"} if stats == "ema" else set()
    expected_keys |= {"q.rotation.reflectors"} if q == "learned" else set()
    expected_keys |= {"q.ref_eigvals"} if (match, q) == ("covariance", "optimal") else set()
    if (match, q, stats) == ("covariance", "optimal", "ema"):
        expected_keys |= {"q.spectral_target", "q.spectral_age"}
    assert set(state) == expected_keys
    fresh = RIFT(5, match=match, q=q, stats=stats)
    fresh.load_state_dict(state)
    reg.eval()
    fresh.eval()
    assert call(fresh, zt, rt).item() == call(reg, zt, rt).item()


def test_bad_input_raises_clear_errors():
    reg = RIFT(4)
    with pytest.raises(ValueError, match="fit_reference"):
        reg(torch.randn(3, 4))
    reg.fit_reference(torch.randn(10, 4))
    with pytest.raises(ValueError, match="2-D"):
        reg(torch.randn(3, 4, 1))
    with pytest.raises(ValueError, match="dim=4"):
        reg(torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 2 rows"):
        reg(torch.randn(1, 4))
    with pytest.raises(ValueError, match="floating-point"):
        reg(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no per-sample reference"):
        reg(torch.randn(3, 4), torch.randn(3, 4))
    bad = torch.randn(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        RIFT(4).fit_reference(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        RIFT(4).fit_reference([torch.randn(5, 4), torch.full((2, 4), float("inf"))])
    with pytest.raises(ValueError, match="at least 2 reference rows"):
        RIFT(4).fit_reference(torch.randn(1, 4))
    with pytest.raises(ValueError, match="dim=4"):
        RIFT(4).fit_reference(torch.randn(5, 3))
    with pytest.raises(ValueError, match="zero variance"):
        RIFT(4).fit_reference(torch.ones(5, 4))
    paired = RIFT(4, match="paired")
    with pytest.raises(ValueError, match="forward\\(z, reference\\)"):
        paired(torch.randn(3, 4))
    with pytest.raises(ValueError, match="same samples"):
        paired(torch.randn(3, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="dim=4"):
        paired(torch.randn(3, 4), torch.randn(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"match": "cov"}, "match must be one of"),
        ({"q": "spectral"}, "q must be one of"),
        ({"stats": "running"}, "stats must be one of"),
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"mean_weight": -1.0}, "mean_weight"),
        ({"mean_weight": float("nan")}, "mean_weight"),
        ({"match": "paired", "stats": "ema"}, "ema"),
        ({"reference_source": "teacher"}, "paired' only"),
        ({"match": "paired", "reference_source": "disk"}, "reference_source"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RIFT(4, **kwargs)
    with pytest.raises(ValueError, match="positive integer"):
        RIFT(0)


def test_registered_with_protocol_attributes():
    assert get("rift") is RIFT
    assert RIFT(4).reference is None
    assert RIFT(4, match="paired").reference == "cache"
    assert RIFT(4, match="paired", reference_source="teacher").reference == "teacher"
    assert not RIFT.needs_feature_maps


def test_prepare_and_penalty(make_data):
    features, z, reference = make_data(6, 5)
    emb = torch.tensor(features).float()
    cov = RIFT(5, q="optimal")
    cov.prepare(PretrainedView(model=torch.nn.Identity(), train_embeddings=emb))
    direct = RIFT(5, q="optimal").fit_reference(emb)
    zt, rt = torch.tensor(z).float(), torch.tensor(reference).float()
    assert cov.penalty(StepInputs(embeddings=zt)).item() == direct(zt).item()
    paired = RIFT(5, match="paired", q="optimal")
    assert paired.penalty(StepInputs(embeddings=zt, reference=rt)).item() == paired(zt, rt).item()
    with pytest.raises(ValueError, match="reference embeddings"):
        paired.penalty(StepInputs(embeddings=zt))
