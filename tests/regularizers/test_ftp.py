"""``--reg ftp`` is the FTP optimizer of strength κ = λ, built by the engine as SPD's is."""

from __future__ import annotations

import timm
import torch

from riftune import regularizers, tuning
from riftune.engine.build import build_optimizer
from riftune.models.classifier import Classifier
from riftune.optim import FTPAdamW
from riftune.regularizers.base import StepInputs


def test_the_engine_builds_ftp_with_lambda_as_kappa_and_anchors_the_backbone():
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    model = Classifier(backbone, backbone.num_features, 2, backbone.pretrained_cfg)
    method = tuning.Full()
    method.apply(model)
    reg = regularizers.get("ftp")()
    assert reg.optimizer == "ftp" and not reg.has_penalty and reg.splits_over_micro_batches
    assert reg.penalty(StepInputs(torch.ones(3, 4, requires_grad=True))).item() == 0.0
    optimizer = build_optimizer(method, model, reg, 1e-3, 1e-2, 0.05, strength=0.3)
    assert isinstance(optimizer, FTPAdamW) and optimizer.ftp_k == 0.3
    anchored = {id(p) for p, _ in optimizer._anchored}
    assert anchored == {id(p) for p in model.backbone.parameters()}
    for group in optimizer.param_groups:  # the head keeps its weight decay, anchored tensors none
        held = {id(p) for p in group["params"]}
        assert group["weight_decay"] == (0.0 if held <= anchored else 0.05)
