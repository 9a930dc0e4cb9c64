"""The anchored parameters of an optimizer that pulls weights back toward where they started
(SPD, FTP): each trained tensor paired with its anchor, checked once."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def pair_anchors(
    param_groups: list[dict], anchors: Mapping[torch.Tensor, torch.Tensor], owner: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, anchor) for every parameter of ``param_groups`` that ``anchors`` names.

    Args:
        param_groups: the optimizer's groups; an anchored parameter must sit in a group
            without weight decay (the pull toward the anchor replaces it).
        anchors: parameter → its anchor (the pretrained value, zero for an adapter).
        owner: the optimizer's name, for messages.

    Raises:
        ValueError: an anchor for a parameter the groups do not hold, an anchored parameter in
            a group with weight decay, or an anchor of another shape.
    """
    by_id = {id(p): a for p, a in anchors.items()}
    held = {id(p) for group in param_groups for p in group["params"]}
    if not by_id.keys() <= held:
        raise ValueError("anchors name parameters that the optimizer does not hold")
    pairs = []
    for group in param_groups:
        for param in group["params"]:
            anchor = by_id.get(id(param))
            if anchor is None:
                continue
            if group["weight_decay"] != 0:
                raise ValueError(
                    "an anchored parameter sits in a group with weight decay "
                    f"{group['weight_decay']}; {owner}'s anchored tensors take none "
                    "(build the groups with spd_param_groups)"
                )
            if anchor.shape != param.shape:
                raise ValueError(
                    f"anchor of shape {tuple(anchor.shape)} for a parameter of shape "
                    f"{tuple(param.shape)}"
                )
            pairs.append((param, anchor))
    return pairs
