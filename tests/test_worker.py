"""`autotune worker` joins a running study from any machine: it reads the setup from the study, refuses
another workload file, torch or device kind in one line, and runs the study's trials beside the others.

The PostgreSQL tests run real processes on the machine's server: several workers on one study, and one
of them killed mid-trial.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import error_line, run_cli, workload_spec
from optuna.trial import TrialState

from autotune.store._records import TrialRecord
from autotune.store._storage import open_storage
from autotune.study._worker import join_options, recorded_space, workload_hash

FAST = ["--window-seconds", "0.2", "--windows", "2", "--warmup-steps", "1", "--seed", "0"]
# tiny's baseline is batch 8, held: batch 2 and 4 run with 4 and 2 accumulation steps; the range test's result
# (for effective batch 8 in fp32) stands for every config.
SPACE = "knobs:\n  batch_size: [2, 4, 8]\n"


def _autotune(*args: str, cwd, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _search(tmp_path, storage: str, study: str, trials: int, *extra: str, workload: str | None = None) -> str:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    args = ["search", "--workload", workload or workload_spec(), "--space", str(space), "--storage", storage]
    args += ["--study", study, "--trials", str(trials), "--slow-fraction", "0", *FAST, *extra]
    process = _autotune(*args, cwd=tmp_path)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def _started_once(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("started")
    _search(folder, f"sqlite:///{folder / 'study.db'}", "joined", 2, "--no-lr-find")
    return folder / "study.db"


@pytest.fixture
def started(_started_once, tmp_path):
    """A study of tiny started by a 2-trial search (the range test off), in a SQLite file of the test's
    own (a copy of one search, run once for the module): its storage and name."""
    copy = tmp_path / "study.db"
    shutil.copyfile(_started_once, copy)
    return f"sqlite:///{copy}", "joined"


def test_worker_reads_the_studys_setup_and_runs_its_trials(started, tmp_path):
    storage, name = started
    result = run_cli("worker", "--study", name, "--storage", storage, "--trials", "2")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 4
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    assert all(t.state.is_finished() for t in study.trials)
    # The worker measured as the search did: the recorded windows, the recorded space.
    joined = join_options(name, storage)
    assert joined.options.measure.window_seconds == 0.2 and joined.options.join
    assert joined.options.space == recorded_space(joined_setup(study))
    assert joined.options.lr_find is False and joined.options.slow_fraction == 0.0


def joined_setup(study):
    from autotune.store import _records

    return _records.read_setup(study)


def test_worker_searches_a_free_effective_batch_over_a_range_as_the_study_does(tmp_path, storage_url):
    space = tmp_path / "free.yaml"
    space.write_text("effective_batch: free\nknobs:\n  batch_size: {low: 1, high: 64}\n")
    args = ["search", "--workload", workload_spec(), "--space", str(space), "--storage", storage_url]
    first = _autotune(*args, "--study", "free", "--trials", "1", "--no-lr-find", *FAST, cwd=tmp_path)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    result = run_cli("worker", "--study", "free", "--storage", storage_url, "--trials", "2")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="free", storage=storage_url)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert {type(t.distributions["batch_size"]).__name__ for t in study.trials} == {"IntDistribution"}


def test_worker_without_trials_stops_when_the_study_has_its_trials(started):
    storage, name = started
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    assert study.user_attrs["trials_target"] == 2
    result = run_cli("worker", "--study", name, "--storage", storage)
    assert result.exit_code == 0, result.output
    assert len(study.trials) == 2  # it had them: nothing ran
    assert "0 trial(s) run" in result.output
    study.set_user_attr("trials_target", 3)
    result = run_cli("worker", "--study", name, "--storage", storage)
    assert result.exit_code == 0, result.output
    assert len(study.trials) == 3


def test_worker_refuses_a_study_that_does_not_exist(started):
    storage, _ = started
    line = error_line(run_cli("worker", "--study", "nope", "--storage", storage))
    assert "no study named 'nope'" in line and "joined" in line


def test_worker_refuses_a_study_without_a_setup_and_creates_nothing(storage_url):
    storage = open_storage(storage_url)
    optuna.create_study(study_name="bare", storage=storage)
    line = error_line(run_cli("worker", "--study", "bare", "--storage", storage_url))
    assert "study 'bare'" in line and "no recorded setup" in line
    assert len(optuna.load_study(study_name="bare", storage=storage).trials) == 0


def test_worker_refuses_another_workload_file_unless_allowed(started, tmp_path):
    storage, name = started
    join = ["worker", "--study", name, "--storage", storage]
    moved = tmp_path / "elsewhere" / "tiny.py"
    moved.parent.mkdir()
    shutil.copyfile(workload_spec().rpartition(":")[0], moved)
    # The same file at another path joins: its hash is the study's.
    same = run_cli("worker", "--study", name, "--storage", storage, "--workload", f"{moved}:workload", "--trials", "1")
    assert same.exit_code == 0, same.output
    moved.write_text(moved.read_text() + "\n# changed\n")
    line = error_line(run_cli("worker", "--study", name, "--storage", storage, "--workload", f"{moved}:workload"))
    assert f"study {name!r}: its workload file is {workload_hash(workload_spec())!r}" in line
    assert "--allow-mixed" in line
    mixed = run_cli(*join, "--workload", f"{moved}:workload", "--trials", "1", "--allow-mixed")
    assert mixed.exit_code == 0, mixed.output
    assert "joined with --allow-mixed: its workload file is" in mixed.output


def test_worker_refuses_another_torch_or_device_kind(started):
    storage, name = started
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    identity = dict(study.user_attrs["identity"])
    study.set_user_attr("identity", {**identity, "torch": "1.13.1"})
    line = error_line(run_cli("worker", "--study", name, "--storage", storage))
    assert "its torch version is '1.13.1', this worker's" in line
    study.set_user_attr("identity", {**identity, "device_kind": "cuda (NVIDIA H200)"})
    line = error_line(run_cli("worker", "--study", name, "--storage", storage))
    assert "its device kind is 'cuda (NVIDIA H200)', this worker's 'cpu (" in line


def test_worker_where_the_workload_file_is_not_at_the_recorded_path_asks_for_it(tmp_path, storage_url):
    moved = tmp_path / "job.py"
    shutil.copyfile(workload_spec().rpartition(":")[0], moved)
    _search(tmp_path, storage_url, "moving", 1, "--no-lr-find", workload=f"{moved}:workload")
    moved.unlink()
    line = error_line(run_cli("worker", "--study", "moving", "--storage", storage_url))
    assert "which is not at that path here: give its file with --workload" in line


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]


def test_three_workers_on_postgresql_run_their_trials_with_one_baseline_and_one_range_test(
    postgres, pg_study, tmp_path
):
    first = _search(tmp_path, postgres, pg_study, 2)
    assert "running the LR range test" in first
    study = optuna.load_study(study_name=pg_study, storage=open_storage(postgres))
    before = len(_finished(study))
    k = 2
    workers = [
        _autotune("worker", "--study", pg_study, "--storage", postgres, "--trials", str(k), cwd=tmp_path)
        for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], outputs
    trials = study.trials
    assert len(_finished(study)) - before == 3 * k
    assert [t for t in trials if not t.state.is_finished()] == []
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert len(study.user_attrs["lr_find"]) == 1  # the range test ran once: its result stood for the workers
    assert not any("running the LR range test" in output for output in outputs), outputs
    # The last worker to finish its trials closed the study; one that finished while others ran did not.
    closed = [output for output in outputs if "its suggestion stands" in output]
    assert closed and len(closed) + sum("other processes are still running" in output for output in outputs) == 3
    assert len({t.number for t in trials}) == len(trials)


def _running_owned_by(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if TrialRecord.of(trial).pid == pid and TrialRecord.of(trial).config:
            return trial
    return None


def test_a_worker_killed_mid_trial_has_its_trial_run_again_once_by_another(postgres, pg_study, tmp_path):
    _search(tmp_path, postgres, pg_study, 1, "--no-lr-find", workload=workload_spec("slow", "faults.py"))
    study = optuna.load_study(study_name=pg_study, storage=open_storage(postgres))
    victim = _autotune("worker", "--study", pg_study, "--storage", postgres, "--trials", "3", cwd=tmp_path)
    give_up = time.monotonic() + 120
    while (killed := _running_owned_by(study, victim.pid)) is None:
        assert victim.poll() is None and time.monotonic() < give_up, victim.communicate()[0]
        time.sleep(0.2)
    survivor = _autotune("worker", "--study", pg_study, "--storage", postgres, "--trials", "2", cwd=tmp_path)
    children = psutil.Process(victim.pid).children(recursive=True)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    output = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    trials = study.trials
    assert [t.number for t in trials if not t.state.is_finished()] == []
    ended = trials[killed.number]
    assert ended.user_attrs["status"] == "interrupted"
    assert f"pid {victim.pid}" in ended.user_attrs["reason"] and "its config runs again" in ended.user_attrs["reason"]
    again = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(again) == 1, [t.user_attrs for t in trials]
    assert again[0].user_attrs["config"] == ended.user_attrs["config"]
    assert again[0].user_attrs["pid"] == survivor.pid and again[0].state == TrialState.COMPLETE
    assert f"trial #{killed.number} was interrupted" in output


def test_export_best_ranks_the_trials_of_one_device_kind_and_names_it(storage_url, tmp_path):
    from conftest import study_with_rates

    from autotune.exceptions import UsageError
    from autotune.export._export import export_best

    study = study_with_rates(storage_url, {0: 100.0, 1: 150.0})
    study.set_user_attr("identity", {"device_kind": "cpu (x86_64)"})
    for number, rate in ((2, 400.0), (3, 410.0)):  # measured by a worker on a GPU: far faster, not comparable
        attrs = {**study.trials[1].user_attrs, "samples_per_second": rate, "device_kind": "cuda (NVIDIA H200)"}
        attrs["config"] = {**attrs["config"], "batch_size": 8 + number}
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=rate, user_attrs=attrs))
    export = export_best("challenged", storage_url, tmp_path / "best.yaml")
    assert export.document["provenance"]["trial"] == 1
    assert export.document["provenance"]["device_kind"] == "cpu (x86_64)"
    assert (
        "ranked among the trials on cpu (x86_64) only; the study also holds cuda (NVIDIA H200) (2 trials) "
        "(--device-kind picks another)"
    ) in export.explanation
    other = export_best("challenged", storage_url, tmp_path / "gpu.yaml", device_kind="cuda (NVIDIA H200)")
    assert other.document["provenance"]["trial"] == 3
    assert other.document["provenance"]["device_kind"] == "cuda (NVIDIA H200)"
    with pytest.raises(UsageError, match=re.escape("--device-kind 'tpu': no trial of the study ran on it")):
        export_best("challenged", storage_url, tmp_path / "x.yaml", device_kind="tpu")
