"""Any timm model as a backbone (``timm:NAME``), pretrained weights from the Hugging Face hub.

``NAME`` is a timm model name, optionally with a pretrained tag
(``vit_small_patch14_dinov2.lvd142m``), or ``hf-hub:ORG/NAME`` for a model published on the
Hugging Face hub in timm's format (its ``config.json`` names the architecture; it is fetched
even without pretrained weights, so such a name needs the hub or its cache). The backbone is built with ``num_classes=0``, so its
forward returns the pooled embedding (n, d).

Image size: for models that take ``img_size`` (ViTs and relatives) ``img_size`` is passed on, so
position embeddings are built (and pretrained ones resampled) for that size; where the model
supports it, ``dynamic_img_size=True`` is passed too, so other sizes (multiples of the patch size)
are accepted at forward time. CNNs take any size and ignore ``img_size``.
"""

from __future__ import annotations

import difflib

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from riftune.errors import UserError

PREFIX = "timm:"
HUB_PREFIX = "hf-hub:"


def _check_name(name: str, pretrained: bool) -> None:
    if name.startswith(HUB_PREFIX):
        if "/" not in name.removeprefix(HUB_PREFIX):
            raise UserError(f"timm:{name} must name a hub repository, timm:hf-hub:ORG/NAME")
        return  # only the hub knows the name: timm reads its config.json from there
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(
            f"unknown timm model {name!r}{hint}; list valid names with "
            f"`python -c \"import timm; print(timm.list_models('*pattern*', pretrained=True))\"`"
        )
    if pretrained and not timm.is_model_pretrained(name):
        raise UserError(
            f"timm model {name!r} has no pretrained weights; pass --no-pretrained, or pick a tag "
            f"from timm.list_models({name.split('.')[0]!r}, pretrained=True)"
        )


def _check_patch_multiple(name: str, model: nn.Module, img_size: int | None) -> None:
    """Patch-based models (ViTs) need sizes that are multiples of their patch size."""
    patch_size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or patch_size is None:
        return
    patch = int(patch_size[0]) if isinstance(patch_size, tuple | list) else int(patch_size)
    if img_size % patch:
        below, above = img_size - img_size % patch, img_size - img_size % patch + patch
        sizes = f"{below} or {above}" if below else str(above)
        raise UserError(
            f"timm:{name} cuts images into {patch}x{patch} patches, so --img-size {img_size} "
            f"does not fit; use --img-size {sizes}"
        )


def _create(name: str, pretrained: bool, img_size: int | None) -> tuple[nn.Module, set[str]]:
    """Build the model, dropping size keyword arguments it does not take.

    Returns:
        The model and the size keyword arguments it accepted.
    """
    # drop_rate=0: no dropout on the pooled embedding (see riftune.models.classifier)
    kwargs: dict = {"dynamic_img_size": True, "drop_rate": 0.0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    while True:
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except TypeError as err:
            rejected = [key for key in kwargs if f"'{key}'" in str(err)]
            if not rejected:
                raise
            for key in rejected:
                del kwargs[key]
            continue
        except OSError as err:  # hub / URL download failures (offline, no cache) are OSErrors
            if not pretrained and not name.startswith(HUB_PREFIX):
                raise
            raise UserError(
                f"could not download the pretrained weights of timm:{name} "
                f"({type(err).__name__}); this machine looks offline: pass --no-pretrained, "
                f"or pre-populate the Hugging Face cache (HF_HOME) with these weights"
            ) from err
        except RuntimeError as err:  # timm: "Unknown model (...)" from a hub config.json
            if not name.startswith(HUB_PREFIX) or "Unknown model" not in str(err):
                raise
            raise UserError(
                f"timm:{name} names an architecture this timm {timm.__version__} does not "
                f"have ({err}); upgrade timm or choose another model"
            ) from err
        return model, set(kwargs)


def create_backbone(
    name: str, pretrained: bool = True, img_size: int | None = None
) -> tuple[nn.Module, dict]:
    """A timm backbone returning pooled embeddings, and the input it expects.

    Args:
        name: timm model name without the ``timm:`` prefix, optionally with a pretrained tag.
        pretrained: download (or take from the HF cache) timm's pretrained weights.
        img_size: image size the data comes at; passed to models that take ``img_size``.

    Returns:
        ``(backbone, cfg)``: ``backbone`` maps (n, 3, H, W) to pooled embeddings (n, d);
        ``cfg`` has ``mean``, ``std`` (3-tuples), ``input_size`` (3, H, W) the model is built
        for, ``native_input_size`` of the weights, ``fixed_input_size``, ``interpolation``,
        ``crop_pct``, ``architecture`` and ``weights`` (the hub id, or ``None``).

    Raises:
        UserError: unknown name, no pretrained weights for it, the download failed, or
            ``img_size`` does not fit the model (not a patch multiple; fixed-size model).
    """
    _check_name(name, pretrained)
    model, accepted = _create(name, pretrained, img_size)
    timm_cfg = model.pretrained_cfg
    native = tuple(timm_cfg.get("input_size", (3, 224, 224)))
    cfg = {
        "architecture": name,
        "mean": tuple(timm_cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": tuple(timm_cfg.get("std", IMAGENET_DEFAULT_STD)),
        "input_size": (3, img_size, img_size) if img_size is not None else native,
        "native_input_size": native,
        "fixed_input_size": bool(timm_cfg.get("fixed_input_size", False))
        and "dynamic_img_size" not in accepted,
        "interpolation": timm_cfg.get("interpolation", "bicubic"),
        "crop_pct": timm_cfg.get("crop_pct", 0.875),
        "weights": (timm_cfg.get("hf_hub_id") or timm_cfg.get("url")) if pretrained else None,
    }
    _check_patch_multiple(name, model, img_size)
    resized = img_size is not None and img_size != native[-1]
    if cfg["fixed_input_size"] and resized and "img_size" not in accepted:
        raise UserError(
            f"timm:{name} needs {native[1]}x{native[2]} images and does not take img_size; "
            f"use --img-size {native[1]}"
        )
    return model, cfg
