"""Own weights: ``timm:hf-hub:ORG/NAME`` (hub mocked) and ``pretrained_file`` local files.

The files are written here from the shipped EfficientNet-Lite0 ImageNet weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import safetensors.torch
import timm
import timm.models._hub
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from riftune.errors import UserError
from riftune.models import build_classifier, load_imagenet_model
from riftune.runs.checkpoint_file import flatten_state

LITE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def imagenet() -> torch.nn.Module:
    """The whole timm model (1000-class classifier included) with the shipped weights."""
    return load_imagenet_model(LITE)


@pytest.fixture(scope="module")
def backbone_weights(imagenet) -> dict[str, torch.Tensor]:
    return {k: v for k, v in imagenet.state_dict().items() if not k.startswith("classifier.")}


def _assert_backbone_is(classifier, weights: dict[str, torch.Tensor]) -> None:
    state = classifier.backbone.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[key], weights[key]) for key in weights)


def test_a_backbone_safetensors_file_loads_exactly(tmp_path, backbone_weights, caplog):
    path = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(backbone_weights, path)
    with caplog.at_level(logging.INFO, logger="riftune.models.weights_file"):
        classifier = build_classifier(LITE, 3, pretrained_file=str(path))
    _assert_backbone_is(classifier, backbone_weights)
    assert classifier.head.out_features == 3
    summary = classifier.pretrained_cfg["weights_load"]
    assert summary == (
        f"loaded {len(backbone_weights)} tensors from {path}; missing 0; unexpected 0; "
        "classifier ignored 0"
    )
    assert classifier.pretrained_cfg["weights"] == str(path)
    assert [record.getMessage() for record in caplog.records] == [summary]


def test_a_whole_timm_model_saved_with_torch_save_loads_without_its_classifier(
    tmp_path, imagenet, backbone_weights
):
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    classifier = build_classifier(LITE, 2, pretrained_file=path)
    _assert_backbone_is(classifier, backbone_weights)
    assert (
        "classifier ignored 2 (classifier.bias, classifier.weight)"
        in (classifier.pretrained_cfg["weights_load"])
    )
    with torch.no_grad():  # the same embeddings as the ImageNet model's pre-logits
        images = torch.randn(2, 3, 64, 64)
        expected = imagenet.forward_head(imagenet.forward_features(images), pre_logits=True)
        assert torch.allclose(classifier.eval().embed(images), expected, atol=1e-5)


def test_a_riftune_checkpoint_layout_loads_and_its_head_is_ignored(tmp_path, backbone_weights):
    source = build_classifier(LITE, 5)
    tensors, _ = flatten_state({"model": source.state_dict()})  # a run's "model/backbone.*" keys
    path = tmp_path / "best.safetensors"
    safetensors.torch.save_file(tensors, path)
    classifier = build_classifier(LITE, 2, pretrained_file=path)
    _assert_backbone_is(classifier, backbone_weights)
    assert (
        "classifier ignored 2 (head.bias, head.weight)" in classifier.pretrained_cfg["weights_load"]
    )


def test_missing_and_unexpected_keys_are_reported_in_one_line(tmp_path, backbone_weights):
    weights = dict(backbone_weights)
    dropped = [key for key in weights if key.startswith("blocks.6.")]
    for key in dropped:
        del weights[key]
    weights["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(weights, path)
    random_init = build_classifier(LITE, 2, pretrained=False).backbone.state_dict()
    classifier = build_classifier(LITE, 2, pretrained_file=path)
    summary = classifier.pretrained_cfg["weights_load"]
    assert "\n" not in summary
    assert f"missing {len(dropped)} ({', '.join(dropped[:3])}, ...)" in summary
    assert "unexpected 1 (extra.weight)" in summary
    state = classifier.backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], backbone_weights["conv_stem.weight"])
    assert not torch.equal(state[dropped[0]], backbone_weights[dropped[0]])  # left at random init
    assert state[dropped[0]].shape == random_init[dropped[0]].shape


def test_a_training_checkpoint_dict_with_a_state_dict_entry_loads(tmp_path, backbone_weights):
    path = tmp_path / "epoch_9.pth.tar"
    torch.save({"epoch": 9, "state_dict": backbone_weights, "arch": LITE}, path)
    classifier = build_classifier(LITE, 2, pretrained_file=path)
    _assert_backbone_is(classifier, backbone_weights)


class _Payload:
    """An object a weights-only load must refuse to unpickle."""


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p, w: torch.save({**w, "conv_stem.weight": torch.zeros(16, 3, 3, 3)}, p),
         r"1 tensors have other shapes .* e\.g\. conv_stem\.weight \(16, 3, 3, 3\) vs \(32, 3, 3, 3\)"),
        (lambda p, w: torch.save([torch.zeros(1)], p), "does not hold a state dict"),
        (lambda p, w: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "none of its 1 tensors"),
        (lambda p, w: torch.save(_Payload(), p), "is neither a safetensors file"),
        (lambda p, w: p.write_bytes(b"not a weights file at all"), "is neither a safetensors file"),
    ],
)  # fmt: skip
def test_files_that_do_not_fit_are_refused_in_one_line(tmp_path, backbone_weights, write, message):
    path = tmp_path / "weights.pt"
    write(path, backbone_weights)
    with pytest.raises(UserError, match=message) as caught:
        build_classifier(LITE, 2, pretrained_file=path)
    assert "\n" not in str(caught.value)


def test_a_truncated_safetensors_file_and_a_missing_one_are_refused(tmp_path, backbone_weights):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(backbone_weights, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="is neither a safetensors file"):
        build_classifier(LITE, 2, pretrained_file=path)
    with pytest.raises(UserError, match="does not exist"):
        build_classifier(LITE, 2, pretrained_file=tmp_path / "nowhere.safetensors")


@pytest.fixture
def hub_repo(tmp_path, imagenet) -> Path:
    """A timm model folder as timm writes it for the hub (config.json, model.safetensors)."""
    timm.models._hub.save_for_hf(imagenet, str(tmp_path / "hub"), safe_serialization=True)
    return tmp_path / "hub"


def test_an_hf_hub_name_passes_through_to_timm(monkeypatch, hub_repo, backbone_weights):
    requested = []

    def download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        requested.append((repo_id, filename))
        if repo_id != "someorg/lite0-chest" or not (hub_repo / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        return str(hub_repo / filename)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", download)
    classifier = build_classifier("timm:hf-hub:someorg/lite0-chest", 4, img_size=64)
    assert requested[0] == ("someorg/lite0-chest", "config.json")
    assert ("someorg/lite0-chest", "model.safetensors") in requested
    _assert_backbone_is(classifier, backbone_weights)
    assert classifier.pretrained_cfg["weights"] == "someorg/lite0-chest"
    assert classifier.pretrained_cfg["input_size"] == (3, 64, 64)
    with torch.no_grad():
        assert classifier(torch.randn(2, 3, 64, 64)).logits.shape == (2, 4)


@pytest.mark.parametrize("pretrained", [True, False])
def test_an_hf_hub_name_offline_is_the_same_one_line_error(monkeypatch, pretrained):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach huggingface.co and the file is not cached")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as caught:
        build_classifier("timm:hf-hub:someorg/lite0-chest", 2, pretrained=pretrained)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("could not download the pretrained weights of timm:hf-hub:")
    assert "offline" in message and "HF_HOME" in message


def test_an_hf_hub_name_without_a_repository_is_refused():
    with pytest.raises(UserError, match="timm:hf-hub:ORG/NAME"):
        build_classifier("timm:hf-hub:lite0", 2)
