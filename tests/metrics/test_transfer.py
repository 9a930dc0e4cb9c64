"""k-NN against a brute-force NumPy implementation; the linear probe against a SciPy optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from riftune.metrics import knn_accuracy, linear_probe_accuracy


def numpy_knn(train, train_labels, test, test_labels, k, temperature):
    """Every test row against every train row, float64, no batching."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    similarity = b @ a.T
    num_classes = max(train_labels.max(), test_labels.max()) + 1
    correct = 0
    for i in range(len(test)):
        nearest = np.argsort(-similarity[i])[: min(k, len(train))]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_labels[j]] += (
                1.0 if temperature is None else np.exp(similarity[i, j] / temperature)
            )
        correct += votes.argmax() == test_labels[i]
    return correct / len(test)


def _clusters(n, d, k, seed, spread=1.5):
    """Samples around k fixed centres (the same for every seed), with seeded noise."""
    centres = np.random.default_rng(12345).normal(size=(k, d)) * spread
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return centres[labels] + rng.normal(size=(n, d)), labels


@pytest.mark.parametrize("temperature", [0.07, None])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_brute_force(k, temperature):
    train, train_labels = _clusters(200, 8, 4, seed=0, spread=0.5)
    test, test_labels = _clusters(77, 8, 4, seed=1, spread=0.5)
    expected = numpy_knn(train, train_labels, test, test_labels, k, temperature)
    got = knn_accuracy(
        torch.from_numpy(train),
        torch.from_numpy(train_labels),
        torch.from_numpy(test),
        torch.from_numpy(test_labels),
        k=k,
        temperature=temperature,
        batch_size=16,
    )
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.3 < got < 1.0


def test_knn_on_real_breastmnist_pixels(medmnist_dir):
    data = np.load(medmnist_dir / "breastmnist.npz")
    train = data["train_images"].reshape(len(data["train_images"]), -1).astype(np.float64)
    test = data["test_images"].reshape(len(data["test_images"]), -1).astype(np.float64)
    train_labels, test_labels = data["train_labels"].ravel(), data["test_labels"].ravel()
    expected = numpy_knn(train, train_labels, test, test_labels, 20, 0.07)
    got = knn_accuracy(
        torch.from_numpy(train).float(),
        torch.from_numpy(train_labels),
        torch.from_numpy(test).float(),
        torch.from_numpy(test_labels),
        batch_size=50,
    )
    assert abs(got - expected) <= 1 / len(test) + 1e-12  # float32 vs float64 near-ties
    assert got > 0.6


def test_knn_caps_k_at_the_memory_size():
    train, train_labels = _clusters(6, 3, 2, seed=2)
    test, test_labels = _clusters(20, 3, 2, seed=3)
    args = [torch.from_numpy(a) for a in (train, train_labels, test, test_labels)]
    assert knn_accuracy(*args, k=50) == knn_accuracy(*args, k=6)


def _sklearn_objective_optimum(x, y, c):
    """argmin over W, b of C Σ −log softmax(Wx + b)_y + ½‖W‖², by SciPy's L-BFGS."""
    d = x.shape[1]
    k = y.max() + 1
    onehot = np.eye(k)[y]

    def objective(theta):
        w, b = theta[: k * d].reshape(k, d), theta[k * d :]
        z = x @ w.T + b
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        value = c * (logsumexp(z, axis=1) - (z * onehot).sum(1)).sum() + 0.5 * (w * w).sum()
        dz = c * (p - onehot)
        return value, np.concatenate([(dz.T @ x + w).ravel(), dz.sum(0)])

    theta = minimize(
        objective,
        np.zeros(k * d + k),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "maxiter": 5000},
    ).x
    return theta[: k * d].reshape(k, d), theta[k * d :]


def test_linear_probe_matches_the_regularized_logistic_optimum():
    train, train_labels = _clusters(150, 5, 3, seed=4, spread=0.8)
    test, test_labels = _clusters(300, 5, 3, seed=5, spread=0.8)
    mean, std = train.mean(0), train.std(0)
    w, b = _sklearn_objective_optimum((train - mean) / std, train_labels, c=0.5)
    expected = np.mean((((test - mean) / std) @ w.T + b).argmax(1) == test_labels)
    got = linear_probe_accuracy(
        torch.from_numpy(train),
        torch.from_numpy(train_labels),
        torch.from_numpy(test),
        torch.from_numpy(test_labels),
        c=0.5,
    )
    assert got == pytest.approx(expected, abs=1 / len(test) + 1e-12)
    assert 0.5 < got < 1.0


def test_bad_input_raises():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="differ in size"):
        knn_accuracy(x, y, torch.randn(4, 2), y[:4])
    with pytest.raises(ValueError, match="n labels"):
        knn_accuracy(x, y[:5], x, y)
    with pytest.raises(ValueError, match="k ≥ 1"):
        knn_accuracy(x, y, x, y, k=0)
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_accuracy(x, torch.zeros(10, dtype=torch.long), x, y)
