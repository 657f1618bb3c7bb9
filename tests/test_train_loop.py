"""autotune.training._train_loop: the loop of autotune train: its warm-up, checkpoints, a clean stop between
steps on SIGINT or SIGTERM, resuming, progress reports against the deadline, evaluations, the loss curve, and
the helpers that stop, restore and seed it."""

from __future__ import annotations

import json
import math
import signal
import threading

import pytest
import torch
from conftest import workload_spec
from full_run_files import CONFIG, Recorder, bare_config, options, write_export

from autotune.exceptions import CheckpointError, TrainingError
from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings
from autotune.training import _train_loop
from autotune.training._checkpoint import checkpoints, load_checkpoint
from autotune.training._full_run import train


def test_train_warmup_steps_are_the_trials(tmp_path):
    assert _train_loop.WARMUP_STEPS == MeasureSettings().warmup_steps


def test_train_checkpoint_holds_the_run_state(tmp_path):
    train(options(tmp_path, bare_config(tmp_path), steps=3))
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000003.pt")
    assert state["step"] == 3 and state["config"] == CONFIG.to_dict()
    assert state["elapsed_seconds"] > 0 and state["passes"] == 0
    assert set(state["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(state["train_step"]) == {"optimizer", "scheduler", "scaler"}
    assert state["train_step"]["scheduler"]["last_epoch"] == 2  # OneCycle's last of its 3 steps: the final LR
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_train_checkpoints_every_n_steps_and_keeps_the_latest_two(tmp_path):
    listener = Recorder()
    train(options(tmp_path, bare_config(tmp_path), steps=7, checkpoint_every_steps=2), listener)
    assert listener.saves == [2, 4, 6]
    assert [path.name for path in checkpoints(tmp_path / "checkpoints")] == ["step_00000006.pt", "step_00000007.pt"]


def test_train_sigterm_saves_a_checkpoint_and_says_interrupted(tmp_path):
    listener = Recorder(signal_at=(signal.SIGTERM, 3))
    before = signal.getsignal(signal.SIGTERM)
    record = train(options(tmp_path, bare_config(tmp_path), steps=1000), listener)
    assert (record.status, record.signal, record.exit_code) == ("interrupted", "SIGTERM", 143)
    assert record.steps == 3
    assert checkpoints(tmp_path / "checkpoints") == [tmp_path / "checkpoints" / "step_00000003.pt"]
    assert json.loads((tmp_path / "checkpoints" / "run_record.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone after the run


def test_train_sigint_exit_code_is_130(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN when started in the background
    record = train(options(tmp_path, bare_config(tmp_path), steps=1000), Recorder(signal_at=(signal.SIGINT, 2)))
    assert (record.signal, record.exit_code, record.steps) == ("SIGINT", 130, 2)
    assert signal.getsignal(signal.SIGINT) is before  # the handler it had before the run


def test_train_resume_continues_the_step_count_and_the_elapsed_time(tmp_path):
    config = bare_config(tmp_path)
    first = train(options(tmp_path, config, steps=10), Recorder(signal_at=(signal.SIGTERM, 4)))
    listener = Recorder()
    second = train(options(tmp_path, config, resume=True), listener)
    assert listener.starts[0].step == 4 and listener.starts[0].resumed_from.name == "step_00000004.pt"
    assert (second.status, second.steps, second.target_steps, second.resumes) == ("finished", 10, 10, 1)
    assert second.seconds > first.seconds and second.setup_seconds > first.setup_seconds
    assert second.samples == 160
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000010.pt")
    assert state["train_step"]["scheduler"]["last_epoch"] == 9  # one OneCycle schedule over both starts, ended


def test_train_resume_refuses_a_different_config(tmp_path):
    train(options(tmp_path, bare_config(tmp_path), steps=2))
    other = bare_config(tmp_path, TrainConfig(batch_size=32, max_lr=0.01))
    with pytest.raises(CheckpointError) as error:
        train(options(tmp_path, other, resume=True))
    assert str(error.value) == (
        f"{tmp_path / 'checkpoints' / 'step_00000002.pt'} was saved with batch_size 16, the config has 32; "
        "--resume continues a run with the config it started with"
    )


def test_train_reports_progress_and_the_deadline(tmp_path):
    export = write_export(tmp_path, full_run={"deadline_seconds": 3600.0, "safety_margin_seconds": 600.0})
    listener = Recorder()
    record = train(options(tmp_path, export, steps=6), listener)
    last = listener.progress[-1]
    assert (last.step, last.total_steps, last.unit) == (6, 6, "samples")
    assert math.isfinite(last.loss) and last.samples_per_second > 0 and last.eta_seconds == 0
    assert last.deadline.deadline_seconds == 3600.0 and last.deadline.limit_seconds == 3000.0
    assert last.deadline.on_track is True
    assert record.fits_deadline is True and record.deadline_seconds == 3600.0 and record.safety_margin_seconds == 600.0


def test_train_diverged_loss_stops_with_one_line(tmp_path):
    # Checked first at the end of the warm-up (a device sync there costs nothing).
    with pytest.raises(
        TrainingError, match=rf"^the loss became nan by step {_train_loop.WARMUP_STEPS}; the run stopped"
    ):
        train(options(tmp_path, bare_config(tmp_path), workload=workload_spec("diverging"), steps=50))


def test_train_runs_the_workloads_evaluation_every_epoch_and_at_the_end(tmp_path):
    listener = Recorder()
    record = train(options(tmp_path, bare_config(tmp_path), workload=workload_spec("evaluated"), epochs=1.5), listener)
    assert [(e["step"], e["epoch"]) for e in record.evaluations] == [(32, 1.0), (48, 1.5)]
    assert record.evaluations[0]["metrics"]["accuracy"] >= 0 and listener.evaluations == record.evaluations
    assert record.evaluation_seconds > 0


def test_train_record_holds_the_loss_curve(tmp_path):
    record = train(options(tmp_path, bare_config(tmp_path), steps=20))
    assert [point["step"] for point in record.curve] == list(range(1, 21))  # 20 steps: a point each
    assert all(math.isfinite(point["loss"]) for point in record.curve)
    seconds = [point["seconds"] for point in record.curve]
    assert seconds == sorted(seconds) and seconds[-1] <= record.seconds


# --- the helpers that stop, restore and seed the loop ------------------------------------------------------


def test_a_signal_inside_the_loops_handlers_is_kept_for_the_loop_and_the_handlers_are_restored():
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with _train_loop._stop_on_signals() as stop:
        assert stop.signal is None
        signal.raise_signal(signal.SIGTERM)  # handled: the process goes on, the loop stops at its next step
        assert stop.signal == "SIGTERM"
        signal.raise_signal(signal.SIGINT)
        assert stop.signal == "SIGINT"
    assert {number: signal.getsignal(number) for number in before} == before


def test_outside_the_main_thread_the_signals_keep_their_usual_effect():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def loop() -> None:
        with _train_loop._stop_on_signals() as stop:
            seen.append((stop.signal, signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    assert seen == [(None, before)]  # no handler set (Python runs them in the main thread only)


def test_resuming_another_workloads_checkpoint_is_refused_in_one_line(tmp_path):
    config = bare_config(tmp_path)
    train(options(tmp_path, config, steps=2))
    with pytest.raises(CheckpointError) as error:  # the same config, another model
        train(options(tmp_path, config, workload=workload_spec(file="knobs.py"), resume=True))
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'checkpoints' / 'step_00000002.pt'}: does not fit this workload's model and optimizer ("
    )
    assert "\n" not in message


def test_a_loss_that_is_not_finite_stops_the_run_naming_the_step():
    _train_loop._check_finite(0.25, 3)
    with pytest.raises(TrainingError) as error:
        _train_loop._check_finite(float("inf"), 7)
    assert str(error.value) == "the loss became inf by step 7; the run stopped (earlier checkpoints are kept)"


def test_a_seeded_run_repeats_itself(tmp_path):
    first = train(options(tmp_path / "a", bare_config(tmp_path), steps=5, seed=3))
    second = train(options(tmp_path / "b", bare_config(tmp_path), steps=5, seed=3))
    other = train(options(tmp_path / "c", bare_config(tmp_path), steps=5, seed=4))
    assert [p["loss"] for p in first.curve] == [p["loss"] for p in second.curve]
    assert [p["loss"] for p in first.curve] != [p["loss"] for p in other.curve]
