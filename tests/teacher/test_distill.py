"""Teacher-student module: loss pieces on hand-made logits, setup (fit or load), freezing, state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from brisk.errors import UserError
from brisk.models import create_model
from brisk.teacher import (
    RGBI3DSettings,
    RGBI3DTeacher,
    RGBMFNetTeacher,
    TeacherContext,
    distillation_kl,
    feature_mimic_loss,
)

CLASSES = 4


# -------------------------------------------------------------------------------------- loss pieces
def test_kl_is_zero_for_identical_logits() -> None:
    logits = torch.randn(5, CLASSES)
    assert distillation_kl(logits, logits.clone(), temperature=4.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_kl_matches_a_hand_computed_value_and_scales_with_t_squared() -> None:
    student = torch.zeros(1, 2)  # uniform: p_s = (1/2, 1/2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (3/4, 1/4) at T = 1
    by_hand = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # = 0.130812
    assert distillation_kl(student, teacher, 1.0).item() == pytest.approx(by_hand, rel=1e-5)
    # At T = 2 the teacher's logits doubled give the same softened p_t; the loss carries T^2 = 4.
    assert distillation_kl(student, 2 * teacher, 2.0).item() == pytest.approx(4 * by_hand, rel=1e-5)
    # Batch mean: an identical second row halves it.
    both_s = torch.cat([student, teacher])
    both_t = torch.cat([teacher, teacher])
    assert distillation_kl(both_s, both_t, 1.0).item() == pytest.approx(by_hand / 2, rel=1e-5)


def test_kl_direction_is_teacher_to_student() -> None:
    p = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    expected = F.kl_div(F.log_softmax(q, 1), F.softmax(p, 1), reduction="batchmean")  # KL(p || q)
    assert distillation_kl(q, p, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert distillation_kl(p, q, 1.0).item() != pytest.approx(expected.item(), rel=1e-3)


def test_feature_mimic_loss_pools_to_the_common_size() -> None:
    teacher = torch.arange(8.0).view(1, 1, 2, 2, 2)
    student = teacher.repeat_interleave(2, dim=2)  # twice the time steps, same content
    assert feature_mimic_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert feature_mimic_loss(student + 1.0, teacher).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in batch or channels"):
        feature_mimic_loss(torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 3, 1, 1, 1))


# -------------------------------------------------------------------------------------------- setup
class FakeRunner:
    """Stands in for the runner's stage-1 fit: records the call, changes the weights it returns."""

    def __init__(self, run_dir: Path) -> None:
        self.calls: list[tuple[nn.Module, str, str]] = []
        self.context = TeacherContext(
            run_dir, torch.device("cpu"), CLASSES, self.fit, log=lambda _m: None
        )

    def fit(self, model: nn.Module, input_key: str, stage: str) -> nn.Module:
        self.calls.append((model, input_key, stage))
        model.train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        return model


class TinyStudent(nn.Module):
    """The smallest student that feature mimicking accepts: one layer named in feature_channels."""

    feature_channels = {"body": 8}

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv3d(3, 8, 3, stride=(1, 4, 4), padding=1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3, 4)))


def small_mfnet_teacher(**kw) -> RGBMFNetTeacher:
    return RGBMFNetTeacher(width_mult=0.25, **kw)


def test_teacher_without_checkpoint_is_fitted_on_rgb_then_frozen(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    teacher = small_mfnet_teacher()
    teacher.setup(runner.context)
    assert len(runner.calls) == 1
    fitted, key, stage = runner.calls[0]
    assert (key, stage) == ("rgb", "teacher") and fitted is teacher.model
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    state = teacher.state_dict()
    assert state["kind"] == "fitted" and state["path"] == str(tmp_path / "teacher")
    assert not any(
        isinstance(v, torch.Tensor) for v in state.values()
    )  # no weights in the student's checkpoint


def test_loss_is_weighted_ce_plus_scaled_kl(tmp_path: Path) -> None:
    teacher = small_mfnet_teacher(alpha=0.7, temperature=3.0, ce_weight=0.5, gate="none")
    teacher.setup(FakeRunner(tmp_path).context)
    rgb = torch.rand(2, 3, 4, 32, 32)
    student_logits = torch.randn(2, CLASSES, requires_grad=True)
    hard = F.cross_entropy(student_logits, torch.tensor([0, 1]))
    loss, logs = teacher.loss(student_logits, {"rgb": rgb, "target": torch.tensor([0, 1])}, hard)
    with torch.no_grad():
        teacher_logits = teacher.model(rgb)
    kl = distillation_kl(student_logits, teacher_logits, 3.0)
    assert loss.item() == pytest.approx(0.5 * hard.item() + 0.7 * kl.item(), rel=1e-5)
    assert logs == pytest.approx({"distill/ce": hard.item(), "distill/kl": kl.item()}, rel=1e-5)
    loss.backward()
    assert student_logits.grad is not None
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.parametrize("gate", ["correct", "confident"])
def test_gate_follows_the_teacher_only_where_it_is_right(tmp_path: Path, gate: str) -> None:
    teacher = small_mfnet_teacher(temperature=2.0, ce_weight=0.0, gate=gate, gate_confidence=0.3)
    teacher.setup(FakeRunner(tmp_path).context)
    rgb = torch.rand(4, 3, 4, 32, 32)
    with torch.no_grad():
        teacher_logits = teacher.model(rgb)
    # The teacher is right on samples 0-2 and wrong on 3; "confident" also drops unsure ones.
    predicted = teacher_logits.argmax(1)
    target = predicted.clone()
    target[3] = (predicted[3] + 1) % CLASSES
    probs = teacher_logits.softmax(1)
    student_logits = torch.randn(4, CLASSES, requires_grad=True)
    hard = torch.zeros(())
    loss, logs = teacher.loss(student_logits, {"rgb": rgb, "target": target}, hard)
    keep = torch.tensor([1.0, 1.0, 1.0, 0.0])
    if gate == "confident":
        keep *= (probs.gather(1, target[:, None]).squeeze(1) >= 0.3).float()
    expected = distillation_kl(student_logits, teacher_logits, 2.0, keep)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["distill/followed"] == pytest.approx(keep.mean().item())
    loss.backward()
    assert student_logits.grad[3].abs().max() == 0  # nothing learnt from the wrong sample
    assert student_logits.grad[0].abs().max() > 0


def test_gate_never_follows_a_teacher_that_predicts_one_class_for_everything(
    tmp_path: Path,
) -> None:
    teacher = small_mfnet_teacher()
    teacher.setup(FakeRunner(tmp_path).context)

    class Collapsed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), CLASSES)
            logits[:, 1] = 50.0  # sure of class 1, whatever the clip
            return logits

    teacher.model = Collapsed()
    rgb = torch.rand(8, 3, 2, 8, 8)
    target = torch.tensor([1, 0, 2, 3, 1, 0, 2, 3])  # "right" on the two class-1 clips
    for _ in range(3):
        student = torch.randn(8, CLASSES, requires_grad=True)
        loss, logs = teacher.loss(student, {"rgb": rgb, "target": target}, torch.zeros(()))
        assert logs["distill/followed"] == 0.0 and loss.item() == 0.0
    # a class the teacher predicts rightly at least gate_precision of the time is followed
    good = torch.tensor([1, 1, 1, 1, 1, 1, 0, 2])
    _, logs = teacher.loss(torch.randn(8, CLASSES), {"rgb": rgb, "target": good}, torch.zeros(()))
    assert logs["distill/followed"] == 0.0  # 2 + 2 + 2 + 6 right of 32 so far: still unreliable
    fresh = small_mfnet_teacher()
    fresh.setup(FakeRunner(tmp_path).context)
    fresh.model = Collapsed()
    _, logs = fresh.loss(torch.randn(8, CLASSES), {"rgb": rgb, "target": good}, torch.zeros(()))
    assert logs["distill/followed"] == 6 / 8


def test_gate_is_a_teacher_config_knob() -> None:
    with pytest.raises(UserError, match="teacher.gate must be one of"):
        RGBMFNetTeacher(gate="sometimes")
    config = RGBI3DSettings(alpha=0.3, gate="none")
    teacher = RGBI3DTeacher(config)
    assert teacher.config is config and teacher.config.alpha == 0.3


def test_python_and_yaml_share_the_teachers_defaults() -> None:
    """conf/teacher/*.yaml extends the settings dataclasses: one set of defaults for both."""
    from dataclasses import asdict

    from brisk.config.schema import register_schemas

    register_schemas()
    for option, cls in (("rgb_i3d", RGBI3DTeacher), ("rgb_mfnet", RGBMFNetTeacher)):
        with initialize_config_module("brisk.conf", version_base=None):
            cfg = compose("config", overrides=["task=video", f"teacher={option}"])
        from_yaml = asdict(instantiate(cfg.teacher).config)
        assert from_yaml == asdict(cls().config), option
    i3d = RGBI3DTeacher().config  # the preset fitted from scratch in stage 1 (docs/video.md)
    assert (i3d.input_transform, i3d.bn_momentum, i3d.dropout) == ("diff", 0.1, 0.0)
    assert i3d.lr is not None and i3d.warmup_epochs
    # stage 2 distils logits and features (the best variant measured, docs/video.md)
    assert (i3d.alpha, i3d.beta, i3d.layers) == (1.0, 0.1, {"conv5": "Mixed_5c"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher.temperature=0", "teacher.temperature must be > 0"),
        ("teacher.dropout=1.0", r"teacher.dropout must be in \[0, 1\)"),
        ("teacher.lr=-0.1", "teacher.lr must be > 0"),
        ("teacher.bn_momentum=2", r"teacher.bn_momentum must be in \[0, 1\]"),
        ("teacher.input_transform=flow", "teacher.input_transform must be one of"),
        ("teacher.epochs=0", "teacher.epochs must be a positive integer"),
        ("teacher.layers=null", "needs teacher.layers"),
    ],
)
def test_teacher_values_are_checked_before_any_work(override: str, message: str) -> None:
    """The dataclass's checks run when the composed config is validated, as one user error."""
    from brisk.config.schema import register_schemas
    from brisk.config.validate import validate_config
    from brisk.errors import ConfigValueError

    register_schemas()
    with initialize_config_module("brisk.conf", version_base=None):
        cfg = compose("config", overrides=["task=video", "teacher=rgb_i3d", override])
    with pytest.raises(ConfigValueError, match=message):
        validate_config(cfg)
    fields = {k: v for k, v in cfg.teacher.items() if k not in ("_target_", "whitening")}
    with pytest.raises(UserError, match=message):
        RGBI3DTeacher(**fields)  # and the constructor, for Python callers


def test_loss_without_rgb_names_the_missing_key(tmp_path: Path) -> None:
    teacher = small_mfnet_teacher()
    teacher.setup(FakeRunner(tmp_path).context)
    with pytest.raises(KeyError, match=r"batch\['rgb'\].*\['input', 'target'\]"):
        teacher.loss(
            torch.zeros(1, CLASSES),
            {"input": torch.zeros(1), "target": torch.zeros(1)},
            torch.tensor(0.0),
        )


def test_i3d_teacher_sees_rgb_scaled_to_minus_one_one(tmp_path: Path) -> None:
    teacher = RGBI3DTeacher(width_mult=0.25, input_transform="rgb")
    teacher.setup(FakeRunner(tmp_path).context)
    seen: list[torch.Tensor] = []
    teacher.network.Conv3d_1a_7x7.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 16, 16)
    teacher.teacher_logits({"rgb": rgb})
    assert torch.allclose(seen[0][0, :, 0, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(seen[0][0, :, 1, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_difference_input_keeps_the_first_frame_and_scales_the_changes(tmp_path: Path) -> None:
    """input_transform=diff: [n_0, k (x_1 - x_0), k (x_2 - x_1)], an invertible re-basing."""
    teacher = RGBI3DTeacher(input_transform="diff", diff_scale=4.0)
    teacher.setup(FakeRunner(tmp_path).context)
    seen: list[torch.Tensor] = []
    teacher.network.Conv3d_1a_7x7.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    frames = torch.tensor([0.2, 0.3, 0.25]).view(1, 1, 3, 1, 1).expand(1, 3, 3, 8, 8)
    teacher.teacher_logits({"rgb": frames})
    pixel = seen[0][0, 0, :, 0, 0]
    assert torch.allclose(pixel, torch.tensor([(0.2 - 0.5) / 0.5, 4 * 0.1, 4 * -0.05]), atol=1e-6)
    # the same weights' checkpoint layout as the rgb transform: a stage's best.pt loads either way
    assert set(teacher.model.state_dict()) == set(
        RGBI3DTeacher(input_transform="rgb").build_model(CLASSES).state_dict()
    )


def test_teacher_bn_momentum_and_dropout_reach_the_network() -> None:
    net = RGBI3DTeacher(bn_momentum=0.1, dropout=0.2).build_model(CLASSES).net
    momenta = {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm3d)}
    assert momenta == {0.1} and net.dropout.p == 0.2
    published = RGBI3DTeacher(bn_momentum=None).build_model(CLASSES).net
    assert {m.momentum for m in published.modules() if isinstance(m, nn.BatchNorm3d)} == {0.01}


def public_i3d(**kw) -> RGBI3DTeacher:
    """The I3D teacher as the public weights need it: full width, RGB frames as they are."""
    return RGBI3DTeacher(width_mult=1.0, input_transform="rgb", **kw)


def save_pytorch_i3d_file(path: Path, classes: int) -> dict[str, torch.Tensor]:
    """A file in pytorch-i3d's layout (no num_batches_tracked, as the 2018 releases)."""
    source = create_model("i3d", num_classes=classes)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return state


def test_i3d_teacher_uses_a_file_with_its_own_label_set_as_is(tmp_path: Path) -> None:
    state = save_pytorch_i3d_file(tmp_path / "rgb_same.pt", CLASSES)

    def must_not_fit(*_args):
        raise AssertionError("a complete teacher checkpoint must not be trained again")

    context = TeacherContext(
        tmp_path, torch.device("cpu"), CLASSES, must_not_fit, log=lambda _m: None
    )
    teacher = public_i3d(checkpoint=str(tmp_path / "rgb_same.pt"))
    teacher.setup(context)
    for key in (
        "Mixed_4e.b1b.conv3d.weight",
        "logits.conv3d.weight",
        "Conv3d_1a_7x7.bn.running_var",
    ):
        assert torch.equal(teacher.network.state_dict()[key], state[key]), key
    saved = teacher.state_dict()
    assert saved["kind"] == "checkpoint" and saved["path"].endswith("rgb_same.pt")
    assert len(saved["file_sha256"]) == 64


def test_i3d_teacher_with_a_replaced_classifier_is_fine_tuned_from_the_file(tmp_path: Path) -> None:
    state = save_pytorch_i3d_file(tmp_path / "rgb_charades.pt", 157)
    runner = FakeRunner(tmp_path)
    seen_at_fit: list[torch.Tensor] = []
    fit = runner.fit
    runner.context.fit = lambda m, k, st: (
        seen_at_fit.append(m.net.Mixed_4e.b1b.conv3d.weight.clone()),
        fit(m, k, st),
    )[1]
    teacher = public_i3d(checkpoint=str(tmp_path / "rgb_charades.pt"))
    teacher.setup(runner.context)
    assert [(key, stage) for _, key, stage in runner.calls] == [("rgb", "teacher")]
    assert torch.equal(seen_at_fit[0], state["Mixed_4e.b1b.conv3d.weight"])  # starts from the file
    assert teacher.network.logits.conv3d.weight.shape == (CLASSES, 1024, 1, 1, 1)
    assert teacher.state_dict()["kind"] == "checkpoint+finetuned"
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_i3d_teacher_finetune_false_keeps_the_fresh_head_and_warns(tmp_path: Path, caplog) -> None:
    save_pytorch_i3d_file(tmp_path / "rgb_charades.pt", 157)
    runner = FakeRunner(tmp_path)
    teacher = public_i3d(checkpoint=str(tmp_path / "rgb_charades.pt"), finetune=False)
    with caplog.at_level("WARNING", logger="brisk"):
        teacher.setup(runner.context)
    assert runner.calls == [] and "untrained head" in caplog.text
    with pytest.raises(UserError, match="teacher.finetune must be auto, true or false"):
        RGBI3DTeacher(finetune="sometimes")


def test_checkpoint_of_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    torch.save(
        create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25).state_dict(),
        tmp_path / "mf.pt",
    )
    teacher = RGBI3DTeacher(checkpoint=str(tmp_path / "mf.pt"), width_mult=0.25)
    with pytest.raises(UserError, match=r"mf\.pt.*does not fit InceptionI3d"):
        teacher.setup(FakeRunner(tmp_path).context)


def test_resume_accepts_the_same_teacher_and_refuses_another(tmp_path: Path) -> None:
    def fitted(seed: int) -> RGBMFNetTeacher:
        torch.manual_seed(seed)
        teacher = small_mfnet_teacher()
        teacher.setup(FakeRunner(tmp_path).context)
        return teacher

    saved = fitted(0).state_dict()
    fitted(0).load_state_dict(saved)  # a finished stage 1 returns the same weights: accepted
    with pytest.raises(ValueError, match="switch teachers"):
        fitted(1).load_state_dict(saved)


# ----------------------------------------------------------------------------------------- features
def test_feature_mimicking_trains_adapters_in_the_student_only(tmp_path: Path) -> None:
    teacher = small_mfnet_teacher(beta=1.0, layers={"conv5": "conv5", "conv4": "conv4"})
    teacher.setup(FakeRunner(tmp_path).context)
    student = create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25)
    teacher.attach(student)
    adapters = student.distill_adapters
    assert set(adapters) == {"conv5", "conv4"}
    teacher_ids = {id(p) for p in teacher.model.parameters()}
    assert not teacher_ids & {id(p) for p in student.parameters()}
    optimizer = torch.optim.SGD(
        student.parameters(), lr=0.1
    )  # built after attach, as the runner does
    batch = {
        "input": torch.randn(2, 3, 4, 32, 32),
        "rgb": torch.rand(2, 3, 4, 32, 32),
        "target": torch.tensor([1, 2]),
    }
    out = student(batch["input"])
    hard = F.cross_entropy(out, batch["target"])
    loss, logs = teacher.loss(out, batch, hard)
    assert logs["distill/feat"] > 0
    assert loss.item() == pytest.approx(
        logs["distill/ce"] + logs["distill/kl"] + logs["distill/feat"], rel=1e-5
    )
    loss.backward()
    assert (
        adapters["conv5"].weight.grad is not None and adapters["conv5"].weight.grad.abs().sum() > 0
    )
    assert all(p.grad is None for p in teacher.model.parameters())
    before = adapters["conv4"].weight.clone()
    optimizer.step()
    assert not torch.equal(before, adapters["conv4"].weight)
    teacher.detach()
    with torch.no_grad():
        student(batch["input"])
    assert teacher._student_features == {}


@pytest.mark.parametrize("optimizer_first", [True, False])
def test_untrained_adapters_are_reported(tmp_path: Path, caplog, optimizer_first: bool) -> None:
    teacher = small_mfnet_teacher(beta=1.0, layers={"body": "conv5"})
    teacher.setup(FakeRunner(tmp_path).context)
    student = TinyStudent()
    if optimizer_first:  # the adapters are not among the optimizer's parameters
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        teacher.attach(student)
    else:
        teacher.attach(student)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    batch = {"rgb": torch.rand(2, 3, 2, 16, 16), "target": torch.tensor([0, 1])}
    with caplog.at_level("WARNING", logger="brisk"):
        for _ in range(3):
            out = student(torch.randn(2, 3, 2, 16, 16))
            loss, _ = teacher.loss(out, batch, F.cross_entropy(out, batch["target"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert "optimizer was built" not in caplog.text  # no step waits to find out ...
        teacher.state_dict()  # ... the run's next checkpoint reads the device-side check
    assert ("optimizer was built before teacher.attach" in caplog.text) == optimizer_first


def test_cost_counting_after_attach_leaves_no_features_behind(tmp_path: Path) -> None:
    from brisk.models.cost import count_params, log_run_costs

    teacher = small_mfnet_teacher(beta=1.0, layers={"body": "conv5"})
    teacher.setup(FakeRunner(tmp_path).context)
    student = TinyStudent()
    params_before = count_params(student)
    teacher.attach(student)
    assert count_params(student) == params_before  # adapters are training-only, not inference cost
    metrics = log_run_costs(
        student, (3, 2, 16, 16), 3, teacher.model, (3, 2, 16, 16), log=lambda _m: None
    )
    assert metrics["cost/teacher/params_m"] > 0
    assert teacher._student_features == {} and teacher._teacher_features == {}


def test_feature_mimicking_rejects_unknown_layers(tmp_path: Path) -> None:
    teacher = small_mfnet_teacher(beta=1.0, layers={"conv9": "conv5"})
    teacher.setup(FakeRunner(tmp_path).context)
    with pytest.raises(ValueError, match="student has no feature layer 'conv9'"):
        teacher.attach(create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25))
    with pytest.raises(UserError, match="needs teacher.layers"):
        small_mfnet_teacher(beta=1.0)


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("option", "cls"), [("rgb_i3d", RGBI3DTeacher), ("rgb_mfnet", RGBMFNetTeacher)]
)
def test_teacher_configs_instantiate(option: str, cls: type) -> None:
    from brisk.config.schema import register_schemas

    register_schemas()
    with initialize_config_module("brisk.conf", version_base=None):
        cfg = compose(
            "config",
            overrides=[
                f"teacher={option}",
                "teacher.alpha=0.3",
                "teacher.temperature=2",
                "teacher.epochs=3",
                "teacher.beta=0.5",
                "teacher.layers={conv5: conv4}",
            ],
        )
    teacher = instantiate(cfg.teacher)
    assert isinstance(teacher, cls)
    c = teacher.config
    assert (c.alpha, c.temperature, c.beta, teacher.checkpoint) == (0.3, 2, 0.5, None)
    assert teacher.layers == {"conv5": "conv4"}  # a mapping can replace the default null
    assert cfg.teacher.epochs == teacher.epochs == 3  # the runner reads it for stage 1
    assert c.finetune == "auto"


@pytest.mark.parametrize(
    ("choice", "cls_name"), [(None, "NoWhitening"), ("recursive", "RecursiveWhitening")]
)
def test_teacher_whitening_is_its_own_config_choice(choice: str | None, cls_name: str) -> None:
    from brisk.config.schema import register_schemas

    register_schemas()
    overrides = ["teacher=rgb_mfnet", "whitening=evd"]
    if choice:
        overrides.append(f"whitening@teacher.whitening={choice}")
    with initialize_config_module("brisk.conf", version_base=None):
        cfg = compose("config", overrides=overrides)
    teacher = instantiate(cfg.teacher)
    assert (
        type(teacher.whitening).__name__ == cls_name
    )  # the student's whitening=evd does not leak in
    assert cfg.whitening._target_.endswith("EVDWhitening")


def test_init_student_copies_every_shared_tensor_and_keeps_the_rest(tmp_path: Path) -> None:
    teacher = small_mfnet_teacher(init_student=True)
    teacher.setup(FakeRunner(tmp_path).context)  # the fake fit moves every teacher weight
    source = teacher.network.state_dict()
    student = create_model("mfcd_net", num_classes=CLASSES, in_channels=5, width_mult=0.25)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher.attach(student)
    after = student.state_dict()
    conv1 = [k for k in after if k.startswith("conv1.") and k.endswith("weight")]
    assert conv1 and all(torch.equal(after[k], before[k]) for k in conv1 if after[k].dim() == 5)
    copied = [k for k in source if k in after and source[k].shape == after[k].shape]
    assert len(copied) > 0.9 * len(after)
    for key in copied:
        assert torch.equal(after[key], source[key]), key


def test_init_student_refuses_a_teacher_with_nothing_in_common(tmp_path: Path) -> None:
    teacher = RGBI3DTeacher(width_mult=0.25, init_student=True)
    teacher.setup(FakeRunner(tmp_path).context)
    with pytest.raises(ValueError, match="init_student.*shares no tensor"):
        teacher.attach(create_model("mfcd_net", num_classes=CLASSES, width_mult=0.25))
