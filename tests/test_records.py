"""autotune's records (a trial's, the study's setup, the export document): written and read in one module,
versioned, and a study written before versions were kept (tests/fixtures/study-v0.db) still reads,
exports and reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import run_cli

from autotune.runner import Status, TrialOutcome
from autotune.store import _records
from autotune.store._records import (
    EXPORT_SCHEMA,
    SETUP_SCHEMA,
    TRIAL_SCHEMA,
    ExportDocument,
    StudySetup,
    TrialRecord,
    TrialStatus,
    write_trial,
)

FIXTURES = Path(__file__).parent / "fixtures"
OLD_STUDY = "demo-v0"


@pytest.fixture
def old_study(tmp_path: Path) -> str:
    """A copy of the demo study written before records carried versions: its storage URL."""
    path = tmp_path / "study-v0.db"
    shutil.copy(FIXTURES / "study-v0.db", path)
    return f"sqlite:///{path}"


def test_a_trial_record_round_trips_through_user_attributes():
    record = TrialRecord(
        status=TrialStatus.OOM,
        reason="out of memory",
        config={"batch_size": 64},
        peak_memory_bytes=2**30,
        window_samples_per_second=[1.0, 2.0],
    )
    attrs = record.to_attrs()
    assert attrs["schema"] == TRIAL_SCHEMA and attrs["status"] == "oom"
    assert "samples_per_second" not in attrs  # not recorded: not written
    assert TrialRecord.from_attrs(attrs) == TrialRecord(**{**record.__dict__, "schema": TRIAL_SCHEMA})


def test_a_record_without_a_schema_is_version_0_and_reads_the_same_keys():
    record = TrialRecord.from_attrs(
        {
            "status": "ok",
            "samples_per_second": 100.0,
            "unit_per_second": 400.0,
            "unit": "tokens",
            "config": {"batch_size": 8, "accumulation_steps": 4},
            "a_key_from_elsewhere": 1,
        }
    )
    assert record.schema == 0 and record.status is TrialStatus.OK
    assert record.rate == 400.0 and record.effective_batch == 32


def test_an_unknown_status_reads_as_none():
    assert TrialRecord.from_attrs({"status": "running"}).status is None


def test_trial_status_is_an_enum_whose_values_are_the_stored_strings():
    assert Status is TrialStatus
    assert {status.value for status in TrialStatus} >= {"ok", "oom", "slow", "diverged", "timeout", "error"}
    assert TrialStatus("slow") == "slow"


def test_an_outcome_is_stored_as_its_record():
    outcome = TrialOutcome(Status.DIVERGED, reason="loss rose", loss_start=2.0, loss_end=1.5, log_tail="x" * 3000)
    attrs = outcome.user_attrs()
    record = TrialRecord.from_attrs(attrs)
    assert record.status is TrialStatus.DIVERGED and record.loss_decrease == 0.5
    assert len(record.log_tail or "") == 2000


def test_write_trial_refuses_a_key_that_is_not_a_record_field():
    study = optuna.create_study()
    trial = study.ask()
    write_trial(trial, crashed=True, status=TrialStatus.ERROR)
    assert trial.user_attrs == {"schema": TRIAL_SCHEMA, "crashed": True, "status": "error"}
    with pytest.raises(KeyError, match="not a trial record field: 'crahsed'"):
        write_trial(trial, crahsed=True)


def test_the_setup_round_trips_one_attribute_per_part_workload_last():
    setup = StudySetup(
        workload="w.py:workload",
        space={"batch_size": [8, 16]},
        baseline={"batch_size": 8},
        device="cpu",
        objective="time",
    )
    attrs = setup.to_attrs()
    assert list(attrs)[-1] == "workload" and attrs["setup_schema"] == SETUP_SCHEMA
    read = StudySetup.from_attrs(attrs)
    assert read.complete and read.objective == "time" and read.schema == SETUP_SCHEMA
    assert read.searched_knobs == ["batch_size"]
    assert not StudySetup.from_attrs({k: v for k, v in attrs.items() if k != "workload"}).complete


def test_an_export_document_carries_its_schema_and_refuses_a_newer_one():
    document = ExportDocument(config={"batch_size": 8}).to_dict()
    assert list(document)[:2] == ["schema", "config"] and document["schema"] == EXPORT_SCHEMA
    with pytest.raises(ValueError, match="export schema 99 is newer than this autotune reads"):
        ExportDocument.from_dict({**document, "schema": 99})


def test_the_old_study_reads_as_records(old_study):
    study = optuna.load_study(study_name=OLD_STUDY, storage=old_study)
    setup = _records.read_setup(study)
    assert setup.complete and setup.schema == 0
    assert setup.workload == "autotune.demo:workload" and setup.objective == "time"
    records = [TrialRecord.of(t) for t in study.trials]
    assert [r.status for r in records] == [TrialStatus.OK] * 4
    assert all(r.schema == 0 and r.samples_per_second and r.config["batch_size"] == 8 for r in records)
    assert records[0].baseline and records[0].noise is not None


def test_the_old_export_reads_as_a_document():
    old = yaml.safe_load((FIXTURES / "study-v0-export.yaml").read_text())
    document = ExportDocument.from_dict(old)
    assert document.schema == 0 and document.config["batch_size"] == 8
    assert document.provenance["workload"] == "autotune.demo:workload"
    assert {key: value for key, value in document.to_dict().items() if key != "schema"} == old


def test_report_reads_a_study_written_before_records_had_versions(old_study):
    result = run_cli("report", "--study", OLD_STUDY, "--storage", old_study)
    assert result.exit_code == 0, result.output
    assert "study demo-v0" in result.output and "4 ok" in result.output


def test_export_best_exports_a_study_written_before_records_had_versions(old_study, tmp_path):
    out = tmp_path / "best.yaml"
    result = run_cli("export-best", "--study", OLD_STUDY, "--storage", old_study, "--out", str(out))
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    old = yaml.safe_load((FIXTURES / "study-v0-export.yaml").read_text())
    assert document["schema"] == EXPORT_SCHEMA
    assert document["config"] == {**old["config"], "optimizer_impl": "default"}  # a knob added since
    assert document["provenance"]["trial"] == old["provenance"]["trial"]
    assert document["lr_find"]["suggestion"] == old["lr_find"]["suggestion"]


@pytest.mark.parametrize("fmt", ["hf", "lightning", "accelerate", "torch"])
def test_every_framework_form_exports_the_old_study(old_study, tmp_path, fmt):
    out = tmp_path / ("best_train.py" if fmt == "torch" else f"best_{fmt}.yaml")
    result = run_cli("export-best", "--study", OLD_STUDY, "--storage", old_study, "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text()


def test_train_runs_the_old_export(tmp_path):
    result = run_cli(
        "train",
        "--config",
        str(FIXTURES / "study-v0-export.yaml"),
        "--steps",
        "2",
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
        "--no-write-back",
        "--out",
        str(tmp_path / "run.json"),
    )
    assert result.exit_code == 0, result.output


def test_the_old_study_resumes_with_todays_demo_and_its_newer_knob(old_study):
    from autotune import SearchOptions, search
    from autotune.runner import MeasureSettings
    from autotune.study import SearchListener

    class Notes(SearchListener):
        notes: list[str] = []

        def on_plan(self, plan):
            self.notes.extend(plan.notes)

    measure = MeasureSettings(warmup_steps=1, windows=1, window_seconds=0.2, max_window_steps=5)
    options = SearchOptions(
        study_name=OLD_STUDY, storage=old_study, space="demo", n_trials=1, measure=measure, lr_find=False, seed=0
    )
    search(options, Notes())
    assert any(
        note.startswith("optimizer_impl is newer than this study: its earlier trials ran it at 'default'")
        for note in Notes.notes
    )
    study = optuna.load_study(study_name=OLD_STUDY, storage=old_study)
    assert len(study.trials) == 5
    assert _records.read_setup(study).space["optimizer_impl"] == ["default", "foreach", "fused"]
