"""Study storage: the SQLite default, one-line errors, and PostgreSQL for real (skipped when absent)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import optuna
import pytest
from conftest import workload_spec
from optuna.trial import TrialState

from autotune.exceptions import StorageError
from autotune.store._storage import DEFAULT_STORAGE, load_study, open_storage, redact
from autotune.study._loop import search
from autotune.study._options import TIME_METRIC_NAME, SearchOptions


def test_open_storage_default_sqlite_creates_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_STORAGE == "sqlite:///studies/autotune.db"
    assert not (tmp_path / "studies").exists()
    storage = open_storage(None)
    assert (tmp_path / "studies" / "autotune.db").is_file()
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


def test_open_storage_relative_sqlite_url_creates_nested_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_storage("sqlite:///runs/today/tuning.db")
    assert (tmp_path / "runs" / "today" / "tuning.db").is_file()


def test_open_storage_malformed_url_is_not_a_database_url():
    with pytest.raises(StorageError) as info:
        open_storage("not a url")
    assert str(info.value) == "storage 'not a url': not a database URL (example: sqlite:///studies/autotune.db)"


def test_open_storage_unreachable_postgresql_cannot_connect_and_hides_the_password():
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://nobody:hunter2@127.0.0.1:1/none")
    message = str(info.value)
    assert message.startswith("storage postgresql://nobody:***@127.0.0.1:1/none: cannot connect: ")
    assert "hunter2" not in message
    assert "\n" not in message


def test_open_storage_missing_driver_is_a_storage_error():
    with pytest.raises(StorageError) as info:
        open_storage("mysql://user:s3cret@127.0.0.1/autotune")
    assert str(info.value) == (
        "storage mysql://user:***@127.0.0.1/autotune: its database driver is not installed (MySQLdb); "
        "for PostgreSQL: pip install 'autotune[postgres]'"
    )


def test_open_storage_postgresql_url_opens(postgres):
    storage = open_storage(postgres)
    assert isinstance(optuna.get_all_study_summaries(storage, include_best_trial=False), list)


def test_search_on_postgresql_then_load_study(postgres, pg_study, space_file, fast_measure):
    result = search(
        SearchOptions(
            lr_find=False,
            workload=workload_spec(),
            study_name=pg_study,
            storage=postgres,
            space=space_file("effective_batch: free\nknobs: {batch_size: [8, 64]}\n"),
            n_trials=2,
            measure=fast_measure,
            seed=0,
            slow_fraction=0.0,
        )
    )
    assert result.trials_run == 2
    assert result.storage == postgres
    study = load_study(pg_study, postgres)
    assert study.study_name == pg_study
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["baseline"] is True
    assert all(t.user_attrs["status"] == "ok" for t in study.trials)
    assert study.metric_names == [TIME_METRIC_NAME]  # tiny has epochs: the search ranks by the full run's time


@pytest.mark.slow  # two searches at once; the default run has three workers on one PostgreSQL study (test_worker)
def test_search_two_concurrent_processes_share_one_postgresql_study(postgres, pg_study, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 16, 32, 64]}\n")
    command = [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "--workload",
        workload_spec(),
        "--space",
        str(space),
        "--storage",
        postgres,
        "--study",
        pg_study,
        "--trials",
        "2",
        "--slow-fraction",
        "0",
        "--window-seconds",
        "0.2",
        "--windows",
        "2",
        "--warmup-steps",
        "1",
        "--no-lr-find",
    ]
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = load_study(pg_study, postgres).trials
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) >= 4
    # A config the sampler proposes again (4 batch sizes, 4 trials) is answered from the trial that measured it.
    measured = {t.number for t in finished if t.user_attrs["status"] == "ok"}
    assert all(t.user_attrs["status"] == "ok" or t.user_attrs["duplicate_of"] in measured for t in finished)
    baselines = [t for t in trials if t.user_attrs.get("baseline")]
    assert len(baselines) == 1
    assert len({t.number for t in trials}) == len(trials)


# Each process loads the studies, says it is ready, and at the same instant as the others puts
# each study's baseline in its queue.
_ENQUEUE_TOGETHER = """
import os, sys, time
import optuna
from autotune.store._storage import open_storage
from autotune.study._loop import _enqueue_baseline
from autotune.study._options import SearchOptions
from autotune.study._plan import plan_search

url, workload, space, folder, *names = sys.argv[1:]
plan = plan_search(SearchOptions(workload=workload, space=space, device="cpu"))
storage = open_storage(url)
studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.01)
start = float(open(os.path.join(folder, "go")).read())
for index, study in enumerate(studies):
    time.sleep(max(0.0, start + 0.3 * index - time.time()))
    _enqueue_baseline(study, plan, storage)
"""


def test_enqueue_baseline_from_processes_starting_together_on_postgresql_enqueues_one(postgres, tmp_path):
    names = [f"autotune-test-{uuid.uuid4().hex[:12]}" for _ in range(5)]
    for name in names:
        optuna.create_study(study_name=name, storage=postgres)
    space = tmp_path / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    try:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _ENQUEUE_TOGETHER, postgres, workload_spec(), str(space), str(tmp_path), *names]
            )
            for _ in range(4)
        ]
        give_up = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < len(processes) and time.monotonic() < give_up:
            assert all(process.poll() is None for process in processes)
            time.sleep(0.05)
        (tmp_path / "go").write_text(str(time.time() + 0.5))
        assert [process.wait(timeout=120) for process in processes] == [0] * len(processes)
        for name in names:
            trials = optuna.load_study(study_name=name, storage=postgres).trials
            assert [t.user_attrs for t in trials] == [{"baseline": True}], name
    finally:
        for name in names:
            optuna.delete_study(study_name=name, storage=postgres)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tuner:hunter2@db:5432/autotune", "postgresql://tuner:***@db:5432/autotune"),
        ("postgresql://tuner@db/autotune?password=hunter2", "postgresql://tuner@db/autotune?password=***"),
        (
            "postgresql://db/autotune?sslmode=require&sslpassword=hunter2",
            "postgresql://db/autotune?sslmode=require&sslpassword=***",
        ),
        ("postgresql://tuner:hunter2@db:59x9/autotune", "postgresql://***/autotune"),  # does not parse
        ("tuner:hunter2@db/autotune", "***@db/autotune"),
        ("sqlite:///studies/autotune.db", "sqlite:///studies/autotune.db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_hides_the_password_in_every_form(url, shown):
    assert redact(url) == shown


def test_open_storage_read_only_missing_sqlite_file_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as info:
        open_storage("sqlite:///runs/tuning.db", create=False)
    assert str(info.value) == (
        "storage sqlite:///runs/tuning.db: no such database file 'runs/tuning.db'; nothing was searched there"
    )
    assert list(tmp_path.iterdir()) == []


def test_open_storage_postgresql_pool_is_small_and_pinged(postgres):
    storage = open_storage(postgres)
    pool = storage.engine.pool
    assert pool.size() == 2
    assert pool._pre_ping is True  # noqa: SLF001 - SQLAlchemy keeps the option only here


def test_postgresql_connections_dropped_by_the_server_cost_a_reconnect_not_the_search(postgres, pg_study):
    """The server ending every connection of this storage (as a restart does) leaves the study usable."""
    import sqlalchemy

    storage = open_storage(postgres)
    study = optuna.create_study(study_name=pg_study, storage=storage)
    study.enqueue_trial({"x": 1})
    pids = set()
    with storage.engine.connect() as connection:  # a pooled connection, returned to the pool after
        pids.add(connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar())
    killer = sqlalchemy.create_engine(postgres, poolclass=sqlalchemy.pool.NullPool)
    with killer.connect() as connection:
        ended = connection.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids) AND pg_terminate_backend(pid)"
            ),
            {"pids": list(pids)},
        ).scalar()
    killer.dispose()
    assert ended == len(pids) >= 1
    trial = study.ask()  # the pool's dead connection is found by its ping and replaced
    study.tell(trial, 1.0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
