"""How well frozen embeddings serve a task they were not trained on: k-NN and linear probes.

Both take the embeddings of a train split (the memory, or the probe's training set) and of a
test split, e.g. from :func:`riftune.metrics.collect_embeddings`; nothing here communicates
across ranks (gather first).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _check_split(
    emb: torch.Tensor, labels: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    emb, labels = torch.as_tensor(emb), torch.as_tensor(labels).reshape(-1)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}: expected (n, d) embeddings with n ≥ 1 and n labels; got "
            f"{tuple(emb.shape)} and {tuple(labels.shape)}"
        )
    return emb, labels.long()


def _check_pair(train_emb, train_labels, test_emb, test_labels):
    train_emb, train_labels = _check_split(train_emb, train_labels, "train")
    test_emb, test_labels = _check_split(test_emb, test_labels, "test")
    if train_emb.shape[1] != test_emb.shape[1]:
        raise ValueError(
            f"train and test embeddings differ in size ({train_emb.shape[1]} vs "
            f"{test_emb.shape[1]}); embed both splits with the same model"
        )
    return train_emb, train_labels, test_emb, test_labels


def knn_accuracy(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    test_emb: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    batch_size: int = 1024,
) -> float:
    r"""Accuracy of a weighted k-nearest-neighbour classifier with cosine similarity.

    As in DINO's k-NN evaluation (Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", ICCV 2021; after Wu et al., CVPR 2018): with sᵢⱼ the cosine similarity of
    test sample i and memory (train) sample j and N_k(i) the k most similar memory samples,

    .. math::

        \hat y_i = \arg\max_c \sum_{j \in N_k(i)} \exp(s_{ij}/\tau)\,[y_j = c],

    τ = ``temperature`` = 0.07 as in DINO; ``temperature=None`` gives every neighbour weight 1
    (plain majority vote, ties to the smallest class). k is capped at the memory size.
    Similarities are computed in float32, ``batch_size`` test rows at a time, so memory stays
    O(batch_size × n_train), on the device of ``train_emb``.

    Shape:
        train_emb: (n_train, d). train_labels: (n_train,). test_emb: (n_test, d).
        test_labels: (n_test,).

    Returns:
        The fraction of test samples classified correctly.
    """
    train_emb, train_labels, test_emb, test_labels = _check_pair(
        train_emb, train_labels, test_emb, test_labels
    )
    if k < 1 or batch_size < 1 or (temperature is not None and temperature <= 0):
        raise ValueError(
            f"knn_accuracy needs k ≥ 1, batch_size ≥ 1, temperature > 0 or None; got "
            f"k={k}, batch_size={batch_size}, temperature={temperature}"
        )
    device = train_emb.device
    memory = F.normalize(train_emb.float(), dim=1)
    memory_labels = train_labels.to(device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, memory.shape[0])
    correct = 0
    for start in range(0, test_emb.shape[0], batch_size):
        queries = F.normalize(test_emb[start : start + batch_size].to(device).float(), dim=1)
        similarity, neighbours = (queries @ memory.T).topk(k, dim=1)
        weights = (
            (similarity / temperature).exp()
            if temperature is not None
            else torch.ones_like(similarity)
        )
        votes = torch.zeros(queries.shape[0], num_classes, device=device)
        votes.scatter_add_(1, memory_labels[neighbours], weights)
        truth = test_labels[start : start + batch_size].to(device)
        correct += int((votes.argmax(1) == truth).sum())
    return correct / test_emb.shape[0]


def linear_probe_accuracy(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    test_emb: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    r"""Test accuracy of an L2-regularized logistic regression on standardized embeddings.

    Features are standardized with the train split's mean and standard deviation; then
    scikit-learn's ``LogisticRegression`` (L-BFGS) minimizes, over W and b,

    .. math::

        C \sum_i -\log \operatorname{softmax}(W x_i + b)_{y_i} + \tfrac12 \lVert W\rVert_F^2

    (for two classes the equivalent binary logistic loss with one weight vector), C = ``c``.

    Shape:
        train_emb: (n_train, d). train_labels: (n_train,). test_emb: (n_test, d).
        test_labels: (n_test,).

    Returns:
        The fraction of test samples classified correctly.
    """
    train_emb, train_labels, test_emb, test_labels = _check_pair(
        train_emb, train_labels, test_emb, test_labels
    )
    # deferred: importing sklearn takes seconds
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if train_labels.unique().numel() < 2:
        raise ValueError("linear_probe_accuracy needs at least two classes in the train split")
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    )
    probe.fit(train_emb.detach().double().cpu().numpy(), train_labels.cpu().numpy())
    predicted = probe.predict(test_emb.detach().double().cpu().numpy())
    return float(np.mean(predicted == test_labels.cpu().numpy()))
