"""Evaluation of a finetuned classifier: accuracy, AUC (with bootstrap intervals), ECE, CKA to
the pretrained embeddings, sharpness, the top Hessian eigenvalue, corrupted-data accuracy and
AUC, and retained generalizability on another dataset.

Metric orchestration only: the pretrained reference (its embeddings, and for
``--transfer-data`` the pretrained model itself) comes from the engine's builder
(:mod:`riftune.engine.build`), so it has the run's starting weights (``--pretrained-file``
included)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from riftune.config import RunConfig
from riftune.data import BatchLoader, ImageTensorDataset, eval_loader, load_dataset
from riftune.distributed import DistributedContext
from riftune.engine.losses import task_loss
from riftune.engine.timing import PhaseTimer
from riftune.metrics import (
    Collected,
    collect,
    expected_calibration_error,
    hessian_top_eigenvalue,
    knn_accuracy,
    linear_cka,
    linear_probe_accuracy,
    robustness_metrics,
    sharpness,
    task_metrics,
)
from riftune.models.classifier import Classifier
from riftune.report.run_outputs import confidence_intervals


@dataclass
class PretrainedEmbeddings:
    """The pretrained backbone's outputs on each split, computed once before training
    (``test`` is None in a cross-validation fold run)."""

    train: Collected
    val: Collected
    test: Collected | None


def pretrained_embeddings(
    model: Classifier, data, batch_size: int, ctx: DistributedContext, amp_dtype
) -> PretrainedEmbeddings:
    """Embeddings of every split by the (still pretrained) ``model``, eval mode, no augmentation."""
    train = (
        data.train.without_augmentation()
        if hasattr(data.train, "without_augmentation")
        else data.train
    )
    return PretrainedEmbeddings(
        *(
            None
            if split is None
            else collect(model, eval_loader(split, batch_size, ctx), ctx.device, amp_dtype)
            for split in (train, data.val, data.test)
        )
    )


@dataclass
class EvalResult:
    """Metrics of one split; ``collected`` keeps the finetuned embeddings, logits and labels.

    ``loss`` is the mean task loss (the training loss without the regularizer); ``ece`` is NaN
    for multi-label tasks (it is defined for one softmax per image).
    """

    acc: float
    auc: float
    cka: float
    ece: float
    loss: float
    collected: Collected

    def scalars(self) -> dict[str, float]:
        return {"acc": self.acc, "auc": self.auc, "cka": self.cka, "ece": self.ece,
                "loss": self.loss}  # fmt: skip

    def prefixed(self, prefix: str) -> dict[str, float]:
        return {prefix + k: v for k, v in self.scalars().items()}


def evaluate_split(
    model: Classifier,
    loader: BatchLoader,
    pretrained: Collected,
    ctx: DistributedContext,
    amp_dtype: torch.dtype | None,
    multilabel: bool = False,
) -> EvalResult:
    """Accuracy, AUC (MedMNIST's; multi-label: means over labels), ECE (15 bins), task loss and
    linear CKA(pretrained, finetuned)."""
    out = collect(model, loader, ctx.device, amp_dtype=amp_dtype)
    scores = task_metrics(out.logits, out.labels, multilabel)
    ece = (
        float("nan")
        if multilabel
        else float(expected_calibration_error(out.logits.softmax(-1), out.labels))
    )
    return EvalResult(
        acc=float(scores["acc"]),
        auc=float(scores["auc"]),
        cka=float(linear_cka(pretrained.embeddings.double(), out.embeddings.double())),
        ece=ece,
        loss=float(task_loss(out.logits.float(), out.labels, multilabel)),
        collected=out,
    )


def _task_loss(model: Classifier, batch) -> torch.Tensor:
    images, labels, _ = batch
    return task_loss(model(images).logits.float(), labels, multilabel=labels.ndim == 2)


def landscape_metrics(
    model: Classifier,
    train: ImageTensorDataset,
    config: RunConfig,
    ctx: DistributedContext,
    timer: PhaseTimer | None = None,
) -> dict[str, float]:
    """Sharpness and top Hessian eigenvalue of the task loss (cross-entropy, no regularizer).

    Both use the same fixed batches: ``--landscape-images`` training images (no augmentation)
    drawn with the run's seed, in whole batches of ``--batch-size`` (rounded down to a multiple
    of batch size × world size, so every rank gets as many), spread over ranks. Sharpness is
    adaptive (ASAM) with radius ``--sharpness-rho`` found by ``--sharpness-steps`` ascent steps;
    the Hessian eigenvalue comes from ``--hessian-iters`` power iterations. Both run in eval
    mode (BatchNorm running statistics) over the parameters the method trained, in float32.
    """
    ev, batch_size, seed = config.evaluation, config.training.batch_size, config.training.seed
    # whole batches only, as many on every rank, so the result is independent of world size
    per_round = batch_size * ctx.world_size
    count = min(ev.landscape_images, len(train)) // per_round * per_round
    if count == 0 or (ev.sharpness_rho <= 0 and ev.hessian_iters <= 0):
        return {}
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]
    plain = train.without_augmentation()
    batches = [
        plain.batch(order[start : start + batch_size].tolist())
        for start in range(0, count, batch_size)
    ]
    device = ctx.device
    mine = [tuple(t.to(device) for t in b) for b in batches[ctx.rank :: ctx.world_size]]
    out = {}
    timer = timer or PhaseTimer()
    if ev.sharpness_rho > 0:
        with timer.phase("sharpness"):
            out["sharpness"] = sharpness(
                model, _task_loss, mine, rho=ev.sharpness_rho, steps=ev.sharpness_steps,
                adaptive=True, seed=seed,
            )  # fmt: skip
    if ev.hessian_iters > 0:
        # Hessian-vector products need a double backward, which only the math kernel of
        # scaled-dot-product attention has on every device
        with timer.phase("hessian"), sdpa_kernel(SDPBackend.MATH):
            out["hessian_top_eig"] = hessian_top_eigenvalue(
                model, _task_loss, mine, iters=ev.hessian_iters, seed=seed
            )
    return out


def transfer_metrics(
    model: Classifier,
    pretrained: Classifier,
    config: RunConfig,
    ctx: DistributedContext,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Retained generalizability on ``--transfer-data``: ``model``'s embeddings against those of
    ``pretrained`` (the run's starting backbone, on ``ctx.device``).

    k-NN accuracy (k = 20, cosine, DINO's weighted vote) on the other dataset's test split with
    its train split (``--transfer-shots`` images per class when given) as memory, and the
    accuracy of a linear probe (L2 logistic regression) trained on its train split;
    ``retained`` = finetuned / pretrained for each.
    """
    norm, ev, seed = model.pretrained_cfg, config.evaluation, config.training.seed
    other = load_dataset(
        ev.transfer_data, data_root=config.data.data_root, img_size=config.data.img_size,
        mean=tuple(norm["mean"]), std=tuple(norm["std"]), seed=seed, shots=ev.transfer_shots,
    )  # fmt: skip
    # on the GPU the images move there once, not batch by batch
    memory, queries = other.train.to(ctx.device), other.test.to(ctx.device)
    scores: dict[str, dict[str, float]] = {}
    for name, net in (("finetuned", model), ("pretrained", pretrained)):
        train = collect(net, eval_loader(memory, ev.eval_batch_size, ctx), ctx.device, amp_dtype)
        test = collect(net, eval_loader(queries, ev.eval_batch_size, ctx), ctx.device, amp_dtype)
        scores[name] = {
            "knn": knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels, k=20),
            "probe": linear_probe_accuracy(
                train.embeddings, train.labels, test.embeddings, test.labels, seed=seed
            ),
        }
    ft, pre = scores["finetuned"], scores["pretrained"]
    return {
        "data": other.name,
        "train_images": len(other.train),
        "knn_acc": ft["knn"],
        "knn_acc_pretrained": pre["knn"],
        "retained": ft["knn"] / pre["knn"] if pre["knn"] > 0 else float("nan"),
        "linear_probe_acc": ft["probe"],
        "linear_probe_acc_pretrained": pre["probe"],
        "linear_probe_retained": ft["probe"] / pre["probe"] if pre["probe"] > 0 else float("nan"),
    }


@dataclass
class FinalEvaluation:
    """metrics.json's evaluation part and the splits it was computed from (no test in a
    cross-validation fold run)."""

    metrics: dict
    test: EvalResult | None
    val: EvalResult


def final_metrics(
    model: Classifier,
    data,
    pretrained: PretrainedEmbeddings,
    pretrained_model: Callable[[], Classifier],
    config: RunConfig,
    ctx: DistributedContext,
    amp_dtype: torch.dtype | None,
    timer: PhaseTimer | None = None,
) -> FinalEvaluation:
    """The evaluation of the selected checkpoint (also ``riftune evaluate``): test and
    validation metrics with their bootstrap 95% intervals, sharpness and the Hessian
    eigenvalue, and on request corrupted-data (``robust``) and transfer metrics. ``timer``
    gets each part's wall time. Without a test split (a cross-validation fold) only the
    validation metrics, which then hold sharpness and the Hessian eigenvalue.

    Args:
        pretrained_model: builds the run's pretrained classifier
            (:func:`riftune.engine.build.build_pretrained_classifier`); called only for
            ``--transfer-data``, whose metrics compare with it.
    """
    timer = timer or PhaseTimer()
    ev, batch = config.evaluation, config.evaluation.eval_batch_size
    multilabel = data.multilabel
    with timer.phase("test_eval"):
        results = {
            name: evaluate_split(
                model, eval_loader(split, batch, ctx), ref, ctx, amp_dtype, multilabel
            )
            for name, split, ref in (
                ("test", data.test, pretrained.test),
                ("val", data.val, pretrained.val),
            )
            if split is not None
        }
        metrics = {name: result.scalars() for name, result in results.items()}
        if ev.bootstrap_resamples > 0 and not multilabel:
            intervals = confidence_intervals(
                {name: result.collected for name, result in results.items()},
                seed=config.training.seed,
                resamples=ev.bootstrap_resamples,
            )
            for name in results:
                metrics[name]["ci"] = intervals[name]
    landscape = metrics["val" if data.test is None else "test"]
    landscape |= landscape_metrics(model, data.train, config, ctx, timer)
    if ev.robustness:
        with timer.phase("robustness"):
            metrics["robust"] = robustness_metrics(
                model, data.test, batch, ctx.device, amp_dtype, seed=config.training.seed
            )
    if ev.transfer_data:
        with timer.phase("transfer"):
            reference = pretrained_model().to(ctx.device)
            metrics["transfer"] = transfer_metrics(model, reference, config, ctx, amp_dtype)
    return FinalEvaluation(metrics, results.get("test"), results["val"])
