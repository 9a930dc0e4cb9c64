"""On a CUDA device a training step never waits for the device (skipped without a GPU).

``torch.cuda.set_sync_debug_mode("error")`` turns every host-device synchronisation into an
error, so the step (forward, task loss, penalty, backward, clipping, AdamW, the schedule and λ's
dual ascent) must run start to end without one; the step log then reads the rows back at once.
"""

from __future__ import annotations

import pytest
import torch

from riftune.distributed import DistributedContext
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import TrainStep
from riftune.engine.weight import ConstantWeight, DualAscentWeight
from riftune.models import build_classifier
from riftune.regularizers import RIFT
from riftune.regularizers.base import NoRegularizer, PretrainedView

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))


def _regularizer(name: str, width: int):
    if name == "none":
        return NoRegularizer()
    match, q = name.split("-")
    return RIFT(width, match=match, q=q)


@pytest.mark.parametrize("budget", [False, True])
@pytest.mark.parametrize("name", ["none", "paired-identity", "covariance-identity"])
def test_a_step_runs_without_a_host_device_synchronisation(name, budget):
    torch.manual_seed(0)
    model = build_classifier("timm:test_convnext", 3, pretrained=False, img_size=32).cuda()
    images, labels = torch.randn(8, 3, 32, 32).cuda(), torch.randint(0, 3, (8,)).cuda()
    indices = torch.arange(8).cuda()
    with torch.no_grad():
        cache = model.embed(images)
    reg = _regularizer(name, model.num_features)
    if name != "none":
        reg.prepare(PretrainedView(model=model, train_embeddings=cache.cpu()))
    reg.to("cuda")
    weight = DualAscentWeight(budget=0.0, lr=1.0).to("cuda") if budget else ConstantWeight(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = TrainStep(
        model, reg, optimizer, warmup_cosine(optimizer, 0, 100),
        torch.amp.GradScaler("cuda", enabled=False), CUDA,
        weight=None if name == "none" else weight, grad_clip=1.0, amp_dtype=torch.bfloat16,
        reference_cache=None if name == "none" else cache,
    )  # fmt: skip
    step(images, labels, indices)  # the first step allocates the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rows = [step(images, labels, indices) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(row["loss"]) for row in rows)
