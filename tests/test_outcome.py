"""autotune.runner._outcome: MeasureSettings (its checks, its step count, when windows are enough), TrialJob
as JSON, WindowResult's rates and TrialOutcome's user attributes, on set figures."""

from __future__ import annotations

import json

import pytest

from autotune.exceptions import ParameterError
from autotune.runner import MeasureSettings, Status, TrialJob, TrialOutcome, WindowResult

# --- Status --------------------------------------------------------------------------------------------


def test_status_values_are_the_recorded_strings():
    assert {"ok", "oom", "slow", "diverged", "timeout", "error"} <= {status.value for status in Status}
    assert Status("oom") is Status.OOM
    assert Status.SLOW == "slow"  # a str: stored and compared as its value


# --- MeasureSettings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message", "parameter"),
    [
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1", "warmup_steps"),
        ({"windows": 0}, "windows must be an integer >= 1, got 0", "windows"),
        ({"windows": 2.0}, "windows must be an integer >= 1, got 2.0", "windows"),
        ({"windows": True}, "windows must be an integer >= 1, got True", "windows"),
        ({"max_window_steps": 0}, "max_window_steps must be an integer >= 1, got 0", "max_window_steps"),
        ({"min_window_steps": 0}, "min_window_steps must be an integer >= 1, got 0", "min_window_steps"),
        ({"windows": 3, "max_windows": 2}, "max_windows must be an integer >= windows (3), got 2", "max_windows"),
        ({"max_windows": True}, "max_windows must be an integer >= windows (3), got True", "max_windows"),
        ({"target_spread": 0}, "target_spread must be between 0 and 1, got 0", "target_spread"),
        ({"target_spread": 1.0}, "target_spread must be between 0 and 1, got 1.0", "target_spread"),
        ({"window_seconds": 0}, "window_seconds must be > 0, got 0", "window_seconds"),
        ({"window_seconds": float("inf")}, "window_seconds must be > 0, got inf", "window_seconds"),
        ({"window_seconds": float("nan")}, "window_seconds must be > 0, got nan", "window_seconds"),
        ({"divergence_factor": 1.0}, "divergence_factor must be > 1, got 1.0", "divergence_factor"),
    ],
)
def test_measure_settings_refuse_values_out_of_range_naming_the_parameter(settings, message, parameter):
    with pytest.raises(ParameterError) as info:
        MeasureSettings(**settings)
    assert str(info.value) == message
    assert info.value.parameters == (parameter,)


def test_measure_settings_take_their_edges():
    settings = MeasureSettings(warmup_steps=0, windows=1, max_windows=1, divergence_factor=None, target_spread=0.5)
    assert settings.most_windows == 1


def test_measure_settings_max_steps_spans_warm_up_a_compile_step_and_the_most_windows():
    assert MeasureSettings(warmup_steps=2, windows=3, max_window_steps=10).max_steps == 2 + 1 + 3 * 10
    assert MeasureSettings(warmup_steps=0, windows=3, max_window_steps=10).max_steps == 1 + 1 + 3 * 10
    settings = MeasureSettings(warmup_steps=1, windows=2, max_windows=6, max_window_steps=5)
    assert settings.most_windows == 6
    assert settings.max_steps == 1 + 1 + 6 * 5


def test_enough_windows_needs_the_set_windows_and_stops_there_without_max_windows():
    settings = MeasureSettings(windows=3)
    assert not settings.enough_windows([], None)
    assert not settings.enough_windows([100.0, 50.0], None)
    assert settings.enough_windows([100.0, 50.0, 200.0], None)  # however spread: max_windows is None


def test_enough_windows_goes_on_while_the_spread_is_above_the_target():
    settings = MeasureSettings(windows=2, max_windows=5, target_spread=0.02)
    assert settings.enough_windows([100.0, 100.0], None)  # no spread at all
    # standard error of the mean of [100, 101]: 0.5, 0.5% of the mean
    assert settings.enough_windows([100.0, 101.0], None)
    # [100, 120]: standard error 10, 9% of the mean: one more window
    assert not settings.enough_windows([100.0, 120.0], None)
    assert not settings.enough_windows([100.0, 120.0, 80.0, 120.0], None)
    assert settings.enough_windows([100.0, 120.0, 80.0, 120.0, 80.0], None)  # max_windows reached


def test_enough_windows_stops_a_spread_trial_once_it_is_told_apart_from_the_best():
    settings = MeasureSettings(windows=2, max_windows=5, target_spread=0.02)
    rates = [100.0, 120.0]  # mean 110, standard error 10
    assert settings.enough_windows(rates, rank_against=200.0)  # 90 away: over 2 standard errors
    assert settings.enough_windows(rates, rank_against=50.0)
    assert not settings.enough_windows(rates, rank_against=125.0)  # 15 away: within them
    assert not settings.enough_windows(rates, rank_against=None)


def test_enough_windows_with_no_measured_rate_waits_for_max_windows():
    settings = MeasureSettings(windows=2, max_windows=3)
    assert not settings.enough_windows([0.0, 0.0], rank_against=100.0)
    assert settings.enough_windows([0.0, 0.0, 0.0], rank_against=100.0)


def test_one_window_is_enough_when_one_is_asked_for_even_with_more_allowed():
    # A single rate has no spread to judge: with windows=1 and max_windows above it, a second one comes.
    settings = MeasureSettings(windows=1, max_windows=3)
    assert not settings.enough_windows([100.0], rank_against=1e9)
    assert MeasureSettings(windows=1).enough_windows([100.0], None)


# --- TrialJob -------------------------------------------------------------------------------------------


def test_trial_job_travels_as_json_and_back_unchanged():
    job = TrialJob(
        workload="tests/workloads/tiny.py:workload",
        config={"batch_size": 8, "precision": "bf16"},
        device="cuda:1",
        measure=MeasureSettings(warmup_steps=2, windows=2, max_windows=4, window_seconds=0.5, seed=7),
        memory_budget_bytes=2**30,
        timeout_seconds=30.0,
        lr_sweep={"min_lr": 1e-5, "max_lr": 1.0, "steps": 50},
        rank_against=1234.5,
        noise_seconds=2.0,
        step_closure=True,
    )
    back = TrialJob.from_json(json.loads(json.dumps(job.to_json())))
    assert back == job
    assert isinstance(back.measure, MeasureSettings)


def test_trial_job_defaults():
    job = TrialJob(workload="w.py:workload", config={})
    assert (job.device, job.measure, job.timeout_seconds) == ("cpu", MeasureSettings(), 600.0)
    assert job.lr_sweep is job.rank_against is job.noise_seconds is job.step_closure is job.memory_budget_bytes is None
    assert TrialJob.from_json(job.to_json()) == job


def test_trial_job_from_json_checks_the_measure_settings():
    data = TrialJob(workload="w.py:workload", config={}).to_json()
    data["measure"]["windows"] = 0
    with pytest.raises(ParameterError):
        TrialJob.from_json(data)


# --- WindowResult and TrialOutcome ------------------------------------------------------------------------


def window(index: int, samples: int, seconds: float, units: float | None = None) -> WindowResult:
    return WindowResult(
        index=index,
        steps=4,
        samples=samples,
        units=samples if units is None else units,
        seconds=seconds,
        data_wait_seconds=0.1,
        loss=0.5,
    )


def test_window_result_rates_are_per_wall_second():
    result = window(0, samples=400, seconds=2.0, units=6400.0)
    assert result.samples_per_second == 200.0
    assert result.units_per_second == 3200.0


def test_user_attrs_of_an_ok_outcome_keep_the_figures_and_leave_out_the_windows_and_log():
    outcome = TrialOutcome(
        status=Status.OK,
        samples_per_second=150.0,
        peak_memory_bytes=2**20,
        loss_start=2.5,
        loss_end=1.0,
        windows=[window(0, 300, 3.0), window(1, 200, 1.0)],
        lr_curve={"lrs": [1e-3], "losses": [1.0]},
        log_tail="some output",
        in_optimizer_step=True,
    )
    attrs = outcome.user_attrs()
    assert attrs["status"] == "ok"
    assert attrs["samples_per_second"] == 150.0 and attrs["peak_memory_bytes"] == 2**20
    assert attrs["loss_decrease"] == 1.5
    assert attrs["window_samples_per_second"] == [100.0, 200.0]
    for key in ("windows", "log_tail", "lr_curve", "in_optimizer_step", "noise_scale", "noise_scale_stderr"):
        assert key not in attrs
    assert attrs.get("noise") is None
    json.dumps(attrs)  # Optuna stores user attributes as JSON


def test_user_attrs_round_window_rates_to_three_decimals():
    attrs = TrialOutcome(status=Status.OK, windows=[window(0, 100, 3.0)]).user_attrs()
    assert attrs["window_samples_per_second"] == [33.333]


def test_user_attrs_without_both_losses_have_no_loss_decrease():
    assert "loss_decrease" not in TrialOutcome(status=Status.OK, loss_start=2.0).user_attrs()
    assert "loss_decrease" not in TrialOutcome(status=Status.OK, loss_end=2.0).user_attrs()


def test_user_attrs_of_a_failed_outcome_keep_the_last_2000_characters_of_its_log():
    log = "x" * 1000 + "Traceback (most recent call last):\n" + "y" * 1990
    attrs = TrialOutcome(status=Status.ERROR, reason="ValueError: bad", log_tail=log).user_attrs()
    assert attrs["status"] == "error" and attrs["reason"] == "ValueError: bad"
    assert attrs["log_tail"] == log[-2000:]
    assert "log_tail" not in TrialOutcome(status=Status.ERROR, reason="why").user_attrs()  # nothing logged


def test_user_attrs_name_the_noise_scale_on_its_own():
    noise = {"value": 512.0, "stderr": 40.0, "groups": 6}
    attrs = TrialOutcome(status=Status.OK, noise=noise).user_attrs()
    assert (attrs["noise_scale"], attrs["noise_scale_stderr"]) == (512.0, 40.0)
    assert attrs["noise"] == noise
    unresolved = TrialOutcome(status=Status.OK, noise={"error": "ValueError: no parameters"}).user_attrs()
    assert unresolved["noise"] == {"error": "ValueError: no parameters"}
    assert unresolved.get("noise_scale") is None and unresolved.get("noise_scale_stderr") is None
