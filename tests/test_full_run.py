"""autotune train's library: the run's length, its record, checkpoints, resume, signals, write-back."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import workload_spec

from autotune.exceptions import CheckpointError, TrainingError, UsageError
from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings
from autotune.store._storage import open_storage
from autotune.training import _train_loop
from autotune.training._checkpoint import checkpoints, load_checkpoint
from autotune.training._full_run import train
from autotune.training._run_plan import TrainListener, TrainOptions, parse_checkpoint_every
from autotune.training._run_record import ACTUAL_KEY_PREFIX

TINY = workload_spec()
CONFIG = TrainConfig(batch_size=16, max_lr=0.01)  # tiny's 512 points: 32 steps per epoch


def write_export(
    folder: Path,
    *,
    config: TrainConfig = CONFIG,
    measured: dict | None = None,
    full_run: dict | None = None,
    provenance: dict | None = None,
    name: str = "best.yaml",
    progress: dict | None = None,
) -> Path:
    """An export-best document with the sections autotune train reads."""
    document = {
        "config": config.to_dict(),
        "measured": {
            "samples_per_second": 1000.0,
            "unit_per_second": 1000.0,
            "unit": "samples",
            "warmup_seconds": 0.5,
            "compile_seconds": 0.0,
            **(measured or {}),
        },
        "one_cycle": {
            "max_lr": config.max_lr,
            "total_steps": 16,
            "pct_start": 0.3,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
            "anneal_strategy": "cos",
            "cycle_momentum": True,
        },
        "full_run": {
            "epochs": 0.5,
            "dataset_size": 512,
            "projected_seconds": 0.756,
            "deadline_seconds": None,
            "safety_margin_seconds": 0.0,
            "fits_deadline": None,
            **(full_run or {}),
        },
        "provenance": {
            "study": None,
            "storage": None,
            "trial": None,
            "workload": TINY,
            "device": "cpu",
            **(provenance or {}),
        },
    }
    if progress is not None:
        document["progress"] = progress
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def bare_config(folder: Path, config: TrainConfig = CONFIG) -> Path:
    path = folder / "config.yaml"
    config.save(path)
    return path


def options(folder: Path, config: Path, **overrides) -> TrainOptions:
    values = {"config": config, "workload": TINY, "checkpoint_dir": folder / "checkpoints", "seed": 0}
    return TrainOptions(**{**values, **overrides})


class Recorder(TrainListener):
    """Keeps what the run reports; sends itself ``signal_at`` = (signal, step) once that step is reported."""

    progress_interval_seconds = 0.0

    def __init__(self, signal_at: tuple[int, int] | None = None) -> None:
        self.signal_at = signal_at
        self.starts, self.progress, self.notes, self.saves, self.evaluations = [], [], [], [], []

    def on_start(self, start) -> None:
        self.starts.append(start)

    def on_progress(self, progress) -> None:
        self.progress.append(progress)
        if self.signal_at is not None and progress.step >= self.signal_at[1]:
            os.kill(os.getpid(), self.signal_at[0])
            self.signal_at = None

    def on_checkpoint(self, path, step) -> None:
        self.saves.append(step)

    def on_evaluation(self, evaluation) -> None:
        self.evaluations.append(evaluation)

    def on_note(self, line) -> None:
        self.notes.append(line)


def test_train_bare_config_runs_its_steps_and_writes_record_and_checkpoint(tmp_path):
    record = train(options(tmp_path, bare_config(tmp_path), steps=5))
    assert (record.status, record.signal, record.exit_code) == ("finished", None, 0)
    assert (record.steps, record.target_steps, record.schedule_steps, record.stop) == (5, 5, 5, "steps")
    assert record.samples == 80 and record.epochs == 5 / 32 and record.dataset_size == 512
    assert record.config == CONFIG.to_dict() and record.workload == TINY and record.device == "cpu"
    assert math.isfinite(record.final_loss)
    assert record.samples_per_second > 0 and record.overall_samples_per_second > 0
    assert record.measured_samples_per_second is None and record.throughput_ratio is None
    assert record.projected_seconds is None and record.time_ratio is None
    assert checkpoints(tmp_path / "checkpoints") == [tmp_path / "checkpoints" / "step_00000005.pt"]
    assert record.checkpoint == str(tmp_path / "checkpoints" / "step_00000005.pt")
    written = json.loads((tmp_path / "checkpoints" / "run_record.json").read_text())
    assert written == json.loads(json.dumps(record.to_json()))


def test_train_checkpoint_holds_the_run_state(tmp_path):
    train(options(tmp_path, bare_config(tmp_path), steps=3))
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000003.pt")
    assert state["step"] == 3 and state["config"] == CONFIG.to_dict()
    assert state["elapsed_seconds"] > 0 and state["passes"] == 0
    assert set(state["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(state["train_step"]) == {"optimizer", "scheduler", "scaler"}
    assert state["train_step"]["scheduler"]["last_epoch"] == 2  # OneCycle's last of its 3 steps: the final LR
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_train_export_compares_with_the_measured_figures_and_the_projection(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path), steps=6))
    assert record.measured_samples_per_second == 1000.0
    assert record.throughput_ratio == record.samples_per_second / 1000.0
    assert record.projected_seconds == pytest.approx(6 * 16 / 1000.0 + 0.5)
    assert record.time_ratio == record.seconds / record.projected_seconds
    assert record.full_run_steps == 16 and record.full_run_projected_seconds == 0.756
    assert record.full_run_estimate_seconds == pytest.approx(0.756 * record.time_ratio)


def test_train_default_length_is_the_exports_full_run_epochs(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path)))
    assert (record.stop, record.steps, record.schedule_steps) == ("epochs", 16, 16)
    assert record.is_full_run and record.full_run_estimate_seconds == record.seconds


def test_train_without_an_export_runs_the_workloads_epochs(tmp_path):
    record = train(options(tmp_path, bare_config(tmp_path)))
    assert (record.stop, record.steps, record.epochs) == ("epochs", 64, 2.0)


def test_train_epochs_option_wins_over_the_export(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path), epochs=0.25))
    assert (record.steps, record.epochs) == (8, 0.25)


def test_train_time_sizes_the_schedule_from_the_measured_rate(tmp_path):
    record = train(options(tmp_path, write_export(tmp_path, measured={"warmup_seconds": 0.1}), time_seconds=0.3))
    assert (record.stop, record.target_steps, record.time_limit_seconds) == ("time", None, 0.3)
    assert record.schedule_steps == int((0.3 - 0.1) * 1000 / 16)
    assert record.seconds >= 0.3


def test_train_time_without_measured_figures_is_refused(tmp_path):
    config = bare_config(tmp_path)
    with pytest.raises(UsageError) as error:
        train(options(tmp_path, config, time_seconds=60))
    assert str(error.value) == (
        f"--time sizes the OneCycle schedule from the measured throughput, and {config} has no measured: section "
        "(write it with autotune export-best); give --steps or --epochs instead"
    )


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


def test_parse_checkpoint_every_reads_steps_durations_and_off():
    assert parse_checkpoint_every("500") == (500, None)
    assert parse_checkpoint_every("5m") == (None, 300.0)
    assert parse_checkpoint_every("off") == (None, None)
    with pytest.raises(UsageError, match="--checkpoint-every must be >= 1 step, got 0"):
        parse_checkpoint_every("0")
    with pytest.raises(UsageError, match="--checkpoint-every: cannot read 'often'"):
        parse_checkpoint_every("often")


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


def test_train_resume_refuses_a_different_length(tmp_path):
    config = bare_config(tmp_path)
    train(options(tmp_path, config, steps=2))
    with pytest.raises(CheckpointError) as error:
        train(options(tmp_path, config, steps=20, resume=True))
    assert str(error.value) == (
        f"{tmp_path / 'checkpoints' / 'step_00000002.pt'} belongs to a run of 2 steps, not 20 steps; --resume "
        "continues a run with the length it started with (leave out --epochs, --steps and --time)"
    )


def test_train_refuses_a_folder_with_checkpoints_without_resume(tmp_path):
    config = bare_config(tmp_path)
    train(options(tmp_path, config, steps=2))
    with pytest.raises(CheckpointError) as error:
        train(options(tmp_path, config, steps=2))
    assert str(error.value) == (
        f"{tmp_path / 'checkpoints'} already holds a run's checkpoints (step_00000002.pt); continue it with --resume, "
        "or give another --checkpoint-dir"
    )


def test_train_resume_without_a_checkpoint_starts_at_step_zero(tmp_path):
    listener = Recorder()
    record = train(options(tmp_path, bare_config(tmp_path), steps=2, resume=True), listener)
    assert record.steps == 2 and record.resumes == 0
    assert listener.notes == [f"no checkpoint in {tmp_path / 'checkpoints'} to resume from: starting at step 0"]


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


def test_train_warmup_steps_are_the_trials(tmp_path):
    assert _train_loop.WARMUP_STEPS == MeasureSettings().warmup_steps


def study_with_a_trial(storage: str) -> optuna.Study:
    study = optuna.create_study(study_name="tiny", storage=open_storage(storage), direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            value=1000.0, user_attrs={"status": "ok", "samples_per_second": 1000.0, "config": CONFIG.to_dict()}
        )
    )
    return study


def test_train_records_the_actual_figures_with_the_study(tmp_path, storage_url):
    study_with_a_trial(storage_url)
    export = write_export(tmp_path, provenance={"study": "tiny", "storage": storage_url, "trial": 0})
    listener = Recorder()
    record = train(options(tmp_path, export, steps=4), listener)
    assert listener.notes == [f"recorded on trial #0 of study tiny ({storage_url})"]
    actual = optuna.load_study(study_name="tiny", storage=storage_url).user_attrs[f"{ACTUAL_KEY_PREFIX}0"]
    assert actual["steps"] == 4 and actual["seconds"] == record.seconds
    assert actual["projected_seconds"] == record.projected_seconds and actual["full_run"] is False
    assert actual["samples_per_second"] == record.samples_per_second and actual["finished_at"] == record.finished_at


def test_train_unreachable_study_is_a_warning_and_the_run_finishes(tmp_path):
    missing = f"sqlite:///{tmp_path / 'gone' / 'studies.db'}"
    export = write_export(tmp_path, provenance={"study": "tiny", "storage": missing, "trial": 0})
    listener = Recorder()
    record = train(options(tmp_path, export, steps=2), listener)
    assert record.status == "finished" and (tmp_path / "checkpoints" / "run_record.json").is_file()
    assert listener.notes == [
        f"warning: the run could not be recorded with study tiny: storage {missing}: no such database file "
        f"'{tmp_path / 'gone' / 'studies.db'}'"
    ]
    assert not (tmp_path / "gone").exists()


def test_train_redacted_storage_needs_the_storage_option(tmp_path, storage_url):
    hidden = "postgresql://autotune:***@db.example/autotune"
    export = write_export(tmp_path, provenance={"study": "tiny", "storage": hidden, "trial": 0})
    with pytest.raises(UsageError) as error:
        train(options(tmp_path, export, steps=2))
    assert str(error.value) == (
        f"{export} came from study 'tiny' in {hidden}, whose password the export hides: give --storage with it "
        "to record the run there, or --no-write-back"
    )
    study_with_a_trial(storage_url)
    listener = Recorder()
    train(options(tmp_path, export, steps=2, storage=storage_url), listener)
    assert listener.notes == [f"recorded on trial #0 of study tiny ({storage_url})"]


def test_train_no_write_back_leaves_the_study_alone(tmp_path, storage_url):
    study_with_a_trial(storage_url)
    export = write_export(tmp_path, provenance={"study": "tiny", "storage": storage_url, "trial": 0})
    listener = Recorder()
    train(options(tmp_path, export, steps=2, write_back=False), listener)
    assert listener.notes == []
    assert optuna.load_study(study_name="tiny", storage=storage_url).user_attrs == {}


# --- the recipe's progress at another effective batch ------------------------------------------------

LARGER = TrainConfig(batch_size=64, max_lr=0.03)  # 8 steps per epoch of tiny's 512 points
PROGRESS = {"recipe_effective_batch": 16, "effective_batch": 64, "samples_factor": 1.5}


def test_train_same_progress_scales_the_recipes_epochs_by_the_samples_factor(tmp_path):
    export = write_export(tmp_path, config=LARGER, progress=PROGRESS)
    recorder = Recorder()
    record = train(options(tmp_path, export, epochs=2, same_progress=True), recorder)
    # The recipe's 2 epochs are 3 at batch 64: 24 steps.
    assert (record.steps, record.stop, record.samples_factor) == (24, "epochs", 1.5)
    assert any(
        note.startswith("--same-progress: 2 of the recipe's epochs are 3 at effective batch 64")
        for note in recorder.notes
    ), recorder.notes


def test_train_same_progress_scales_the_recipes_steps_to_this_batch(tmp_path):
    export = write_export(tmp_path, config=LARGER, progress=PROGRESS)
    record = train(options(tmp_path, export, steps=40, same_progress=True))
    # 40 of the recipe's steps of 16 samples, x 1.5 to its progress, are 15 steps of 64.
    assert (record.steps, record.target_steps, record.samples_factor) == (15, 15, 1.5)


def test_train_without_same_progress_runs_the_length_given(tmp_path):
    export = write_export(tmp_path, config=LARGER, progress=PROGRESS)
    record = train(options(tmp_path, export, epochs=2))
    assert (record.steps, record.samples_factor) == (16, None)


def test_train_same_progress_needs_the_exports_progress_section(tmp_path):
    with pytest.raises(UsageError) as caught:
        train(options(tmp_path, write_export(tmp_path), epochs=1, same_progress=True))
    assert str(caught.value) == (
        f"--same-progress needs the export's progress: section, and {tmp_path / 'best.yaml'} "
        "has none (write it with autotune export-best)"
    )


def test_train_same_progress_with_time_is_refused():
    with pytest.raises(UsageError) as caught:
        TrainOptions(time_seconds=60.0, same_progress=True)
    assert str(caught.value) == "--same-progress scales --epochs or --steps to the recipe's progress, not --time"


def test_train_record_holds_the_loss_curve(tmp_path):
    record = train(options(tmp_path, bare_config(tmp_path), steps=20))
    assert [point["step"] for point in record.curve] == list(range(1, 21))  # 20 steps: a point each
    assert all(math.isfinite(point["loss"]) for point in record.curve)
    seconds = [point["seconds"] for point in record.curve]
    assert seconds == sorted(seconds) and seconds[-1] <= record.seconds
