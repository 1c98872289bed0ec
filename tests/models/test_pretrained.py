"""model.checkpoint=PATH: published layouts (cypw/PyTorch-MFNet, pytorch-i3d), written by tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from brisk.config.schema import register_schemas
from brisk.errors import UserError
from brisk.models import create_model

CLASSES = 8


def mfnet_file(path: Path, classes: int = 400, width: float = 0.25) -> dict[str, torch.Tensor]:
    """cypw/PyTorch-MFNet's file: a DataParallel state dict in 'state_dict', plus training state."""
    torch.manual_seed(1)
    state = create_model("mfcd_net", num_classes=classes, width_mult=width).state_dict()
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


def i3d_file(path: Path, classes: int = 400) -> dict[str, torch.Tensor]:
    """pytorch-i3d's layout: a plain state dict, no num_batches_tracked (the 2018 files)."""
    torch.manual_seed(2)
    state = create_model("i3d", num_classes=classes, width_mult=0.25).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return state


def test_mfnet_kinetics_file_starts_the_student_with_a_fresh_classifier(
    tmp_path: Path, caplog
) -> None:
    source = mfnet_file(tmp_path / "MFNet3D_Kinetics-400.pth")
    caplog.set_level(logging.INFO, logger="brisk")
    fresh = create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25)
    model = create_model(
        "mfcd_net",
        num_classes=CLASSES,
        width_mult=0.25,
        checkpoint=str(tmp_path / "MFNet3D_Kinetics-400.pth"),
    )
    own = model.state_dict()
    for key, value in source.items():
        if key.startswith("classifier."):
            assert own[key].shape[0] == CLASSES
        else:
            assert torch.equal(own[key], value), key
    assert not torch.equal(own["conv1.conv.weight"], fresh.state_dict()["conv1.conv.weight"])
    assert "classifier replaced (the file has 400 classes)" in caplog.text
    assert "classifier.weight" in caplog.text


def test_five_channel_student_inflates_conv1_with_the_rgb_mean(tmp_path: Path) -> None:
    source = mfnet_file(tmp_path / "k400.pth")
    model = create_model(
        "mfcd_net",
        num_classes=CLASSES,
        in_channels=5,
        width_mult=0.25,
        checkpoint=str(tmp_path / "k400.pth"),
    )
    w, src = model.conv1.conv.weight.detach(), source["conv1.conv.weight"]
    assert w.shape[1] == 5
    assert torch.equal(w[:, :3], src)
    for c in (3, 4):
        assert torch.allclose(w[:, c], src.mean(dim=1))
    assert torch.equal(model.conv5.B03.conv_m2.conv.weight, source["conv5.B03.conv_m2.conv.weight"])


def test_rgb_mfnet_and_i3d_load_their_layouts(tmp_path: Path) -> None:
    source = mfnet_file(tmp_path / "mf.pth", classes=CLASSES)
    rgb = create_model(
        "mfnet_rgb", num_classes=CLASSES, width_mult=0.25, checkpoint=str(tmp_path / "mf.pth")
    )
    assert all(torch.equal(rgb.net.state_dict()[k], v) for k, v in source.items())
    i3d_state = i3d_file(tmp_path / "rgb_imagenet.pt")
    for keep_time in (False, True):  # the strides do not change any weight
        model = create_model(
            "i3d",
            num_classes=CLASSES,
            width_mult=0.25,
            keep_time=keep_time,
            checkpoint=str(tmp_path / "rgb_imagenet.pt"),
        )
        own = model.state_dict()
        assert torch.equal(
            own["Mixed_5c.b3b.conv3d.weight"], i3d_state["Mixed_5c.b3b.conv3d.weight"]
        )
        assert own["logits.conv3d.weight"].shape[0] == CLASSES


def test_shape_mismatch_outside_classifier_and_stem_is_refused(tmp_path: Path) -> None:
    mfnet_file(tmp_path / "narrow.pth", width=0.25)
    with pytest.raises(
        UserError, match=r"narrow\.pth.*width_mult.*conv2\.B01\.conv_i1\.conv\.weight: file \(8,"
    ):
        create_model(
            "mfcd_net", num_classes=CLASSES, width_mult=0.5, checkpoint=str(tmp_path / "narrow.pth")
        )
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="shares no tensor"):
        create_model("i3d", num_classes=CLASSES, checkpoint=str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="missing.pth.*does not exist"):
        create_model("i3d", num_classes=CLASSES, checkpoint=str(tmp_path / "missing.pth"))


def test_missing_tensors_are_logged_and_the_config_key_reaches_the_model(
    tmp_path: Path, caplog
) -> None:
    state = mfnet_file(tmp_path / "partial.pth", classes=CLASSES)
    del state["tail.bn.weight"]
    torch.save(state, tmp_path / "partial.pth")
    caplog.set_level(logging.INFO, logger="brisk")
    register_schemas()
    with initialize_config_module("brisk.conf", version_base=None):
        cfg = compose(
            "config",
            overrides=[
                "task=video",
                "model.width_mult=0.25",
                f"model.checkpoint={tmp_path / 'partial.pth'}",
            ],
        )
    model = instantiate(cfg.model, num_classes=CLASSES)
    assert torch.equal(model.conv1.conv.weight, state["conv1.conv.weight"])
    assert "missing in the file, kept as initialised: tail.bn.weight" in caplog.text
