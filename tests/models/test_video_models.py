"""Video models: published parameter counts, shapes, the pytorch-i3d checkpoint layout, costs.

Reference figures (parameter counts, GMACs) are those of the MFCD-Net / I3D notes and torchvision's
model documentation, written here as literals so a change to a model cannot silently move them.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from brisk.errors import UserError
from brisk.models import create_model
from brisk.models.cost import (
    clip_flops,
    cost_metrics,
    count_params,
    format_cost_table,
    log_run_costs,
    measure_cost,
)
from brisk.models.i3d import same_padding
from brisk.models.pretrained import file_sha256, load_checkpoint_into, read_state_dict


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- MFNet-3D
@pytest.mark.parametrize(
    ("classes", "expected"), [(51, 7_727_987), (101, 7_766_437), (400, 7_996_368)]
)
def test_mfcd_net_has_the_published_parameter_count(classes: int, expected: int) -> None:
    assert n_params(create_model("mfcd_net", num_classes=classes)) == expected


def test_mfcd_net_with_motion_vector_channels_only_widens_the_stem() -> None:
    rgb = create_model("mfcd_net", num_classes=51)
    with_mv = create_model("mfcd_net", num_classes=51, in_channels=5)
    # conv1 is 16 x C x 3 x 5 x 5: two more input channels add 2 * 16 * 75 weights and nothing else.
    assert n_params(with_mv) - n_params(rgb) == 2 * 16 * 3 * 5 * 5


def test_mfcd_net_runs_small_clips_and_reports_stage_shapes() -> None:
    model = create_model("mfcd_net", num_classes=7, in_channels=5, width_mult=0.25).eval()
    clip = torch.randn(2, 5, 4, 56, 56)
    with torch.no_grad():
        feats = model.forward_features(clip)
        logits = model.head(feats["conv5"])
    assert logits.shape == (2, 7)
    # conv1 + pool: /4 in space; conv2 halves time; conv3..conv5 halve space.
    expected = {
        "pool1": (4, 14, 14),
        "conv2": (2, 14, 14),
        "conv3": (2, 7, 7),
        "conv4": (2, 4, 4),
        "conv5": (2, 2, 2),
    }
    for name, thw in expected.items():
        assert tuple(feats[name].shape[2:]) == thw, name
        assert feats[name].shape[1] == model.feature_channels[name], name
    assert all(c % 16 == 0 for c in model.feature_channels.values())  # grouped convs need it
    assert n_params(model) < n_params(create_model("mfcd_net", num_classes=7, in_channels=5)) / 10


def test_mfcd_net_rejects_clips_with_the_wrong_channel_count() -> None:
    model = create_model("mfcd_net", num_classes=3, width_mult=0.25)
    with pytest.raises(ValueError, match=r"expects clips shaped \(B, 3, T, H, W\)"):
        model(torch.randn(1, 5, 4, 32, 32))


def test_mfnet_rgb_normalises_unit_rgb_like_mfnet() -> None:
    model = create_model("mfnet_rgb", num_classes=3, width_mult=0.25).eval()
    seen: list[torch.Tensor] = []
    model.net.conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    model(torch.full((1, 3, 2, 16, 16), 124 / 255))
    # (x_u8 - [124, 117, 104]) * 0.0167 on a pixel of value 124 in every channel.
    expected = torch.tensor([0.0, 7 * 0.0167, 20 * 0.0167])
    assert torch.allclose(seen[0][0, :, 0, 0, 0], expected, atol=1e-5)
    # The constants are not saved: the checkpoint holds only MFNet-3D's own weights.
    assert all(k.startswith("net.") for k in model.state_dict())


def test_video_model_configs_build_through_hydra() -> None:
    from brisk.config.schema import register_schemas

    register_schemas()
    with initialize_config_module("brisk.conf", version_base=None):
        cfg = compose(
            "config", overrides=["model=mfcd_net", "model.width_mult=0.25", "model.in_channels=5"]
        )
    model = instantiate(cfg.model, num_classes=11).eval()
    assert model(torch.randn(1, 5, 2, 32, 32)).shape == (1, 11)
    for name in ("i3d", "coviar", "mfnet_rgb"):
        with initialize_config_module("brisk.conf", version_base=None):
            assert compose("config", overrides=[f"model={name}"]).model.name == name


# ---------------------------------------------------------------------------------------------- I3D
I3D_STEMS = {
    "Conv3d_1a_7x7": (64, 3, 7),
    "Conv3d_2b_1x1": (64, 64, 1),
    "Conv3d_2c_3x3": (192, 64, 3),
}
# (input channels, six branch widths) per Inception module, from the I3D structure table.
I3D_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def pytorch_i3d_state_dict(
    classes: int, with_batch_counts: bool = False
) -> dict[str, torch.Tensor]:
    """A state dict laid out like pytorch-i3d's rgb_imagenet.pt / rgb_charades.pt, random values."""
    g = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}

    def unit(prefix: str, out_c: int, in_c: int, k: int) -> None:
        state[f"{prefix}.conv3d.weight"] = torch.randn(out_c, in_c, k, k, k, generator=g) * 0.01
        state[f"{prefix}.bn.weight"] = torch.rand(out_c, generator=g) + 0.5
        state[f"{prefix}.bn.bias"] = torch.randn(out_c, generator=g) * 0.1
        state[f"{prefix}.bn.running_mean"] = torch.randn(out_c, generator=g) * 0.1
        state[f"{prefix}.bn.running_var"] = torch.rand(out_c, generator=g) + 0.5
        if with_batch_counts:
            state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    for name, (out_c, in_c, k) in I3D_STEMS.items():
        unit(name, out_c, in_c, k)
    for name, (in_c, (w0, w1a, w1b, w2a, w2b, w3b)) in I3D_MIXED.items():
        unit(f"{name}.b0", w0, in_c, 1)
        unit(f"{name}.b1a", w1a, in_c, 1)
        unit(f"{name}.b1b", w1b, w1a, 3)
        unit(f"{name}.b2a", w2a, in_c, 1)
        unit(f"{name}.b2b", w2b, w2a, 3)
        unit(f"{name}.b3b", w3b, in_c, 1)
    state["logits.conv3d.weight"] = torch.randn(classes, 1024, 1, 1, 1, generator=g) * 0.01
    state["logits.conv3d.bias"] = torch.randn(classes, generator=g) * 0.01
    return state


def test_i3d_has_the_published_parameter_count_and_key_set() -> None:
    model = create_model("i3d", num_classes=400)
    assert n_params(model) == 12_697_264
    expected = pytorch_i3d_state_dict(400, with_batch_counts=True)
    assert len(expected) == 344
    own = model.state_dict()
    assert set(own) == set(expected)
    assert {k: tuple(v.shape) for k, v in own.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }


def test_i3d_loads_a_2018_kinetics_file_unchanged(tmp_path) -> None:
    state = pytorch_i3d_state_dict(400)  # no num_batches_tracked, as in the 2018 files
    torch.save(state, tmp_path / "rgb_imagenet.pt")
    # model.checkpoint=PATH: how published weights start a run
    model = create_model("i3d", num_classes=400, checkpoint=str(tmp_path / "rgb_imagenet.pt"))
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert len(file_sha256(tmp_path / "rgb_imagenet.pt")) == 64


def test_i3d_loader_replaces_a_classifier_of_another_class_count(tmp_path) -> None:
    state = pytorch_i3d_state_dict(157)  # Charades
    torch.save(state, tmp_path / "rgb_charades.pt")
    torch.manual_seed(0)
    fresh_logits = create_model("i3d", num_classes=51).logits.conv3d.weight.clone()
    torch.manual_seed(0)
    model = create_model("i3d", num_classes=51, checkpoint=str(tmp_path / "rgb_charades.pt"))
    assert torch.equal(model.Mixed_5c.b2b.conv3d.weight, state["Mixed_5c.b2b.conv3d.weight"])
    assert torch.equal(model.logits.conv3d.weight, fresh_logits)
    assert model.logits.conv3d.weight.shape == (51, 1024, 1, 1, 1)
    report = load_checkpoint_into(
        create_model("i3d", num_classes=51), read_state_dict(tmp_path / "rgb_charades.pt"), "f"
    )
    assert report.replaced_classifier and report.checkpoint_classes == 157


def test_i3d_loader_names_missing_and_unexpected_keys(tmp_path) -> None:
    state = pytorch_i3d_state_dict(400)
    del state["Mixed_4d.b1b.bn.running_var"]
    state["Mixed_4d.b9.conv3d.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.pt")
    path = tmp_path / "broken.pt"
    # strict, as a teacher's checkpoint is loaded: refused, naming both keys
    with pytest.raises(
        UserError, match=r"broken\.pt.*Mixed_4d\.b1b\.bn\.running_var.*Mixed_4d\.b9"
    ):
        load_checkpoint_into(
            create_model("i3d", num_classes=400), read_state_dict(path), str(path), strict=True
        )
    # model.checkpoint: the missing tensor keeps its initialisation, the extra one is ignored
    model = create_model("i3d", num_classes=400, checkpoint=str(path))
    assert torch.equal(model.Mixed_4d.b1b.conv3d.weight, state["Mixed_4d.b1b.conv3d.weight"])
    with pytest.raises(UserError, match="nowhere.pt"):
        create_model("i3d", num_classes=400, checkpoint=str(tmp_path / "nowhere.pt"))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 7, 2, (2, 3)),
        (64, 7, 2, (2, 3)),
        (7, 3, 2, (1, 1)),
        (8, 2, 2, (0, 0)),
        (28, 3, 1, (1, 1)),
        (15, 3, 2, (1, 1)),
    ],
)
def test_same_padding_follows_tensorflow(
    size: int, kernel: int, stride: int, pads: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == pads


def test_i3d_end_point_shapes_at_the_published_input() -> None:
    model = create_model("i3d", num_classes=400).to("meta")
    features = model.forward_features(torch.empty(1, 3, 64, 224, 224, device="meta"))
    assert tuple(features.shape) == (1, 1024, 8, 7, 7)
    assert tuple(model.forward_features(torch.empty(1, 3, 16, 224, 224, device="meta")).shape) == (
        1,
        1024,
        2,
        7,
        7,
    )


def test_i3d_runs_small_clips() -> None:
    model = create_model("i3d", num_classes=6, width_mult=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 6)


# ------------------------------------------------------------------------------------------- CoViAR
def test_coviar_parameters_are_those_of_its_three_torchvision_resnets() -> None:
    classes = 101
    # torchvision's documented sizes at 1000 classes: ResNet-152 60,192,808; ResNet-18 11,689,512.
    r152 = 60_192_808 - 2049 * 1000 + 2049 * classes
    r18 = 11_689_512 - 513 * 1000 + 513 * classes
    mv_stem_change = -64 * 1 * 7 * 7  # conv1 reads 2 motion-vector channels instead of 3
    data_bn = 2 * 3 + 2 * 2  # input BatchNorms of the residual and MV streams
    assert (
        n_params(create_model("coviar", num_classes=classes))
        == r152 + 2 * r18 + mv_stem_change + data_bn
    )
    assert n_params(create_model("coviar", num_classes=classes, in_channels=3)) == r152 + r18 + 6


def test_coviar_fuses_three_streams() -> None:
    model = create_model("coviar", num_classes=4).eval()
    clip = torch.randn(1, 5, 3, 32, 32)
    with torch.no_grad():
        fused = model(clip)
        i = model.iframe(clip[:, :3, :1])
        r = model.residual(clip[:, :3, 1:])
        mv = model.mv(clip[:, 3:, 1:])
    assert fused.shape == (1, 4)
    assert torch.allclose(fused, 2 * i + r + mv, atol=1e-5)
    with pytest.raises(ValueError, match="in_channels must be 3"):
        create_model("coviar", num_classes=4, in_channels=4)


# --------------------------------------------------------------------------------------------- cost
def test_clip_flops_counts_a_conv_by_hand() -> None:
    conv = nn.Conv3d(3, 8, 3, padding=1, bias=False)
    macs = 8 * 3 * 27 * (4 * 8 * 8)
    assert clip_flops(conv, (3, 4, 8, 8)) == 2 * macs
    assert conv.weight.device.type == "cpu"  # counted on a meta copy; the model itself is untouched


def test_standard_clip_costs_match_the_published_measurements() -> None:
    # MFNet-3D 8.28 GMAC per 12x224^2 clip; I3D 111.2 GMAC at 64 frames and 27.8 at 16.
    assert clip_flops(
        create_model("mfcd_net", num_classes=101), (3, 12, 224, 224)
    ) / 2e9 == pytest.approx(8.28, abs=0.01)
    i3d = create_model("i3d", num_classes=400)
    assert clip_flops(i3d, (3, 64, 224, 224)) / 2e9 == pytest.approx(111.2, abs=0.1)
    assert clip_flops(i3d, (3, 16, 224, 224)) / 2e9 == pytest.approx(27.8, abs=0.1)


def test_cost_report_has_ratios_and_run_metrics() -> None:
    student = create_model("mfcd_net", num_classes=5, width_mult=0.25)
    teacher = create_model("i3d", num_classes=5, width_mult=0.25)
    s = measure_cost("student", student, (3, 4, 32, 32), clips_per_video=10)
    t = measure_cost("teacher", teacher, (3, 4, 32, 32), clips_per_video=10)
    assert s.params == count_params(student) and s.flops_per_video == 10 * s.flops_per_clip
    metrics = cost_metrics([s, t])
    assert metrics["cost/teacher_over_student/params"] == pytest.approx(t.params / s.params)
    assert metrics["cost/student/gflops_per_video"] == pytest.approx(10 * s.flops_per_clip / 1e9)
    table = format_cost_table([s, t], reference="student")
    assert f"{t.flops_per_video / s.flops_per_video:.2f}" in table.splitlines()[-1]
    lines: list[str] = []
    logged = log_run_costs(student, (3, 4, 32, 32), 10, teacher, (3, 4, 32, 32), log=lines.append)
    assert logged == metrics and "| teacher |" in lines[0]


def test_bench_script_measures_every_model_in_both_layouts() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = {"student": create_model("mfcd_net", num_classes=3, width_mult=0.25)}
    speed = bench.throughput(tiny, (3, 2, 16, 16), batch=1, rounds=2, device=torch.device("cpu"))
    assert set(speed) == {"student, ndhwc", "student, ncdhw"}
    assert all(
        s["rounds"] == 2 and s["clips_per_s"] > 0 and s["cpu_s_per_clip"] > 0
        for s in speed.values()
    )
