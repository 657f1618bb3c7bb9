"""autotune.training._run_plan: what a full run is: its options and their checks, --checkpoint-every, its
length in optimizer steps (epochs, steps, time, the recipe's progress), a resumed run's length, and its
record's figures against the export's."""

from __future__ import annotations

import pytest
from full_run_files import CONFIG, LARGER, PROGRESS, TINY, bare_config, options, write_export

from autotune.exceptions import CheckpointError, UsageError
from autotune.training._full_run import train
from autotune.training._run_plan import (
    RunLength,
    RunPlan,
    TrainOptions,
    check_resumed_length,
    make_record,
    parse_checkpoint_every,
    run_length,
)
from autotune.training._run_record import RunCounters
from autotune.workload import load_workload


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "--steps must be >= 1, got 0"),
        ({"steps": 5, "epochs": 1.0}, "give one of --epochs, --steps and --time, not --epochs and --steps"),
        ({"steps": 5, "time_seconds": 60.0}, "give one of --epochs, --steps and --time, not --steps and --time"),
        ({"epochs": 0.0}, "--epochs must be > 0, got 0.0"),
        ({"checkpoint_every_steps": 0}, "--checkpoint-every must be >= 1 step, got 0"),
    ],
)
def test_train_options_bad_values_are_refused(tmp_path, overrides, message):
    with pytest.raises(UsageError) as error:
        TrainOptions(config=tmp_path / "best.yaml", **overrides)
    assert str(error.value) == message


def test_train_same_progress_with_time_is_refused():
    with pytest.raises(UsageError) as caught:
        TrainOptions(time_seconds=60.0, same_progress=True)
    assert str(caught.value) == "--same-progress scales --epochs or --steps to the recipe's progress, not --time"


def test_parse_checkpoint_every_reads_steps_durations_and_off():
    assert parse_checkpoint_every("500") == (500, None)
    assert parse_checkpoint_every("5m") == (None, 300.0)
    assert parse_checkpoint_every("off") == (None, None)
    with pytest.raises(UsageError, match="--checkpoint-every must be >= 1 step, got 0"):
        parse_checkpoint_every("0")
    with pytest.raises(UsageError, match="--checkpoint-every: cannot read 'often'"):
        parse_checkpoint_every("often")


def test_train_export_compares_with_the_measured_figures_and_the_projection(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path), steps=6))
    assert record.measured_samples_per_second == 1000.0
    assert record.throughput_ratio == record.samples_per_second / 1000.0
    assert record.projected_seconds == pytest.approx(6 * 16 / 1000.0 + 0.5)
    assert record.time_ratio == record.seconds / record.projected_seconds
    assert record.full_run_steps == 16 and record.full_run_projected_seconds == 0.756
    assert record.full_run_estimate_seconds == pytest.approx(0.756 * record.time_ratio)


def test_train_time_sizes_the_schedule_from_the_measured_rate(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path, measured={"warmup_seconds": 0.1}), time_seconds=0.3))
    assert (record.stop, record.target_steps, record.time_limit_seconds) == ("time", None, 0.3)
    assert record.schedule_steps == int((0.3 - 0.1) * 1000 / 16)
    assert record.seconds >= 0.3


def test_train_same_progress_scales_the_recipes_steps_to_this_batch(tmp_path):
    export = write_export(tmp_path, config=LARGER, progress=PROGRESS)
    record = train(options(tmp_path, export, steps=40, same_progress=True))
    # 40 of the recipe's steps of 16 samples, x 1.5 to its progress, are 15 steps of 64.
    assert (record.steps, record.target_steps, record.samples_factor) == (15, 15, 1.5)


def test_train_resume_refuses_a_different_length(tmp_path):
    config = bare_config(tmp_path)
    train(options(tmp_path, config, steps=2))
    with pytest.raises(CheckpointError) as error:
        train(options(tmp_path, config, steps=20, resume=True))
    assert str(error.value) == (
        f"{tmp_path / 'checkpoints' / 'step_00000002.pt'} belongs to a run of 2 steps, not 20 steps; --resume "
        "continues a run with the length it started with (leave out --epochs, --steps and --time)"
    )


# --- the length and the record, on plans made here ---------------------------------------------------------


def _plan(tmp_path, config=CONFIG, *, plan_epochs=None, measured=None, full_run=None, progress=None, **options):
    """A plan of tiny (512 points) at ``config`` (CONFIG's batch 16: 32 optimizer steps an epoch) whose length
    in epochs is ``plan_epochs``; ``options`` are its TrainOptions."""
    return RunPlan(
        options=TrainOptions(config=tmp_path / "best.yaml", checkpoint_dir=tmp_path / "checkpoints", **options),
        config=config,
        workload_spec=TINY,
        workload=load_workload(TINY),
        device="cpu",
        measured=measured or {},
        one_cycle={},
        full_run=full_run or {},
        provenance={"study": "tiny", "trial": 3},
        epochs=plan_epochs,
        storage=None,
        resume_from=None,
        notes=[],
        progress=progress or {},
    )


def test_run_length_in_epochs_counts_whole_optimizer_steps_and_the_exports_full_run(tmp_path):
    length = run_length(_plan(tmp_path, plan_epochs=1.5, full_run={"epochs": 0.5}), 512)
    assert length == RunLength("epochs", 48, None, 48, 16)
    assert run_length(_plan(tmp_path, plan_epochs=0.001), 512).target_steps == 1  # never less than one step
    assert run_length(_plan(tmp_path, plan_epochs=1.0), 512).full_run_steps is None  # no export: no full run


def test_run_length_in_steps_or_time(tmp_path):
    assert run_length(_plan(tmp_path, steps=10), 512) == RunLength("steps", 10, None, 10, None)
    measured = {"samples_per_second": 800.0, "warmup_seconds": 0.4}
    timed = run_length(_plan(tmp_path, time_seconds=2.0, measured=measured), 512)
    # The schedule spans the steps the time allows at the measured rate, less the warm-up.
    assert timed == RunLength("time", None, 2.0, int((2.0 - 0.4) * 800 / 16), None)
    assert timed.describe() == "2.0s (80 scheduled steps)"


def test_run_length_to_the_recipes_progress_records_its_samples_factor(tmp_path):
    exported = run_length(_plan(tmp_path, LARGER, plan_epochs=3.0, progress=PROGRESS), 512)
    assert (exported.target_steps, exported.samples_factor) == (24, None)  # the length as given
    scaled = _plan(tmp_path, LARGER, plan_epochs=3.0, progress=PROGRESS, same_progress=True, epochs=2.0)
    assert run_length(scaled, 512).samples_factor == 1.5  # plan_run scaled --epochs 2 to the plan's 3
    steps = run_length(_plan(tmp_path, LARGER, progress=PROGRESS, same_progress=True, steps=40), 512)
    assert (steps.target_steps, steps.samples_factor) == (15, 1.5)  # 40 x 16 x 1.5 samples in steps of 64
    plain = run_length(_plan(tmp_path, LARGER, progress=PROGRESS, steps=40), 512)
    assert (plain.target_steps, plain.samples_factor) == (40, None)


def test_a_resumed_run_keeps_its_length_unless_another_is_given(tmp_path):
    saved = RunLength("epochs", 64, None, 64, None).to_json()
    plan = _plan(tmp_path, plan_epochs=1.0, full_run={"epochs": 0.5})
    kept = check_resumed_length(tmp_path / "step_00000010.pt", saved, run_length(plan, 512), plan.options)
    assert kept == RunLength("epochs", 64, None, 64, 16)  # the checkpoint's length, this export's full run
    again = _plan(tmp_path, plan_epochs=2.0, epochs=2.0)
    assert check_resumed_length(tmp_path / "x.pt", saved, run_length(again, 512), again.options).target_steps == 64
    other = _plan(tmp_path, plan_epochs=1.0, epochs=1.0)
    with pytest.raises(CheckpointError, match="belongs to a run of 64 steps, not 32 steps"):
        check_resumed_length(tmp_path / "x.pt", saved, run_length(other, 512), other.options)


def _record(plan, length, *, steps, seconds, status="finished"):
    counters = RunCounters(steps=steps, samples=steps * 16, seconds=seconds, steady_samples=1600, steady_seconds=2.0)
    return make_record(
        plan,
        length,
        counters,
        dataset_size=512,
        micro_batches=32,
        unit="samples",
        status=status,
        signal_name=None,
        final_loss=0.5,
        checkpoint=None,
        started_at="2026-12-02T00:00:00",
    )


def test_make_record_compares_the_run_with_the_exports_figures_and_projection(tmp_path):
    full_run = {"epochs": 0.5, "projected_seconds": 10.0, "deadline_seconds": 30.0, "safety_margin_seconds": 5.0}
    measured = {"samples_per_second": 1000.0, "warmup_seconds": 0.5}
    plan = _plan(tmp_path, steps=8, measured=measured, full_run=full_run)
    record = _record(plan, run_length(plan, 512), steps=8, seconds=1.0)
    assert record.projected_seconds == pytest.approx(8 * 16 / 1000.0 + 0.5)
    assert record.time_ratio == pytest.approx(1.0 / record.projected_seconds)
    assert record.samples_per_second == 800.0 and record.throughput_ratio == pytest.approx(0.8)
    assert record.full_run_estimate_seconds == pytest.approx(10.0 * record.time_ratio)  # 8 of its 16 steps
    assert (record.deadline_seconds, record.safety_margin_seconds, record.fits_deadline) == (30.0, 5.0, True)
    assert (record.epochs, record.study, record.trial) == (8 / 32, "tiny", 3)
    slow = _record(plan, run_length(plan, 512), steps=8, seconds=60.0)
    assert slow.fits_deadline is False  # at this pace the full run misses the deadline less its margin


def test_make_record_of_the_full_run_itself_estimates_it_by_its_own_time(tmp_path):
    plan = _plan(tmp_path, plan_epochs=0.5, full_run={"epochs": 0.5, "projected_seconds": 10.0})
    record = _record(plan, run_length(plan, 512), steps=16, seconds=7.0)
    assert record.full_run_estimate_seconds == 7.0 and record.fits_deadline is None
    assert record.safety_margin_seconds is None  # no deadline: no margin either
    cut = _record(plan, run_length(plan, 512), steps=16, seconds=7.0, status="interrupted")
    assert cut.full_run_estimate_seconds is None  # no measured figures to scale the projection by


def test_the_record_goes_into_the_checkpoint_folder_unless_out_is_given(tmp_path):
    assert TrainOptions(checkpoint_dir=tmp_path / "run").record_path == tmp_path / "run" / "run_record.json"
    assert TrainOptions(out=tmp_path / "record.json").record_path == tmp_path / "record.json"
