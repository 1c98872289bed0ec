"""The start-up estimate of a run's cost: its arithmetic, for a fresh and a resumed run."""

from __future__ import annotations

from brisk.trainer.estimate import DurationEstimate


def test_a_fresh_run_is_priced_whole() -> None:
    estimate = DurationEstimate(total_steps=56_160, steps_per_epoch=351, epochs=160, start_step=0)
    text = estimate.message(per_step=0.78, first=2, last=6)
    assert text.startswith("this run: 56,160 steps (160 epochs x 351 steps) at 0.780 s/step")
    assert "about 12h10m04s of training" in text and "left" not in text


def test_a_resumed_run_says_what_is_left() -> None:
    estimate = DurationEstimate(total_steps=100, steps_per_epoch=10, epochs=10, start_step=40)
    text = estimate.message(per_step=2.0, first=42, last=46)
    assert "100 steps (10 epochs x 10 steps)" in text and "about 3m20s of training" in text
    assert "60 steps left: 2m00s" in text


def test_a_step_cap_is_named_and_a_one_step_run_is_not_priced() -> None:
    capped = DurationEstimate(total_steps=50, steps_per_epoch=10, epochs=10, start_step=0)
    assert "50 steps (trainer.max_steps)" in capped.message(1.0, 2, 6)
    single = DurationEstimate(total_steps=1, steps_per_epoch=1, epochs=1, start_step=0)
    assert single.step_done() is None and single.done


def test_the_estimate_comes_once_after_the_warm_up_step() -> None:
    synced = []
    estimate = DurationEstimate(100, 10, 10, 0, sync=lambda: synced.append(1), max_wait=1e9)
    said = [estimate.step_done() for _ in range(10)]
    assert [i for i, s in enumerate(said) if s] == [5]  # step 1 warms up, steps 2-6 are timed
    assert "(steps 2-6)" in str(said[5]) and len(synced) == 2
