"""autotune.training._full_run: autotune train's plan (the config file and its export sections, the length,
the device, the checkpoint folder: every error raised before anything is built), the run, its record written
and stored with the study the config came from."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from full_run_files import CONFIG, LARGER, PROGRESS, TINY, Recorder, bare_config, options, write_export

from autotune.exceptions import CheckpointError, UsageError
from autotune.store._storage import open_storage
from autotune.training._checkpoint import checkpoints
from autotune.training._full_run import train
from autotune.training._run_record import ACTUAL_KEY_PREFIX


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


def test_train_time_without_measured_figures_is_refused(tmp_path):
    config = bare_config(tmp_path)
    with pytest.raises(UsageError) as error:
        train(options(tmp_path, config, time_seconds=60))
    assert str(error.value) == (
        f"--time sizes the OneCycle schedule from the measured throughput, and {config} has no measured: section "
        "(write it with autotune export-best); give --steps or --epochs instead"
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
