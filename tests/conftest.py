"""Shared fixtures: tiny CPU workloads, throwaway storage, short measurements."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings

WORKLOADS = Path(__file__).parent / "workloads"
FIXTURES = Path(__file__).parent / "fixtures"

# The conftest's fast_measure, for session- and module-scoped fixtures (which cannot use a function-scoped one).
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the machine's PostgreSQL (trust auth)


@pytest.fixture(scope="session")
def postgres() -> str:
    """The machine's PostgreSQL URL; the test is skipped, saying why, where it is not reachable."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
    except OSError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {' '.join(str(exc).split())}")
    return PG_URL


@pytest.fixture
def pg_study(postgres):
    """A unique study name on the PostgreSQL server, deleted afterwards."""
    import uuid

    import optuna

    name = f"autotune-test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=postgres)
    except KeyError:
        pass


def workload_spec(name: str = "workload", file: str = "tiny.py") -> str:
    """``tests/workloads/<file>:<name>`` as a --workload value."""
    return f"{WORKLOADS / file}:{name}"


@pytest.fixture(scope="session", autouse=True)
def _own_device_locks(tmp_path_factory):
    """This test run's device locks (autotune's cache folder) are its own: trials of another test
    run on this machine neither wait for nor block this run's trials."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("autotune-cache")))
        yield


@pytest.fixture
def tiny_spec() -> str:
    return workload_spec()


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'test.db'}"


@pytest.fixture
def fast_measure() -> MeasureSettings:
    """One warm-up step and two short windows: a trial takes about as long as its process start."""
    return MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)


@pytest.fixture
def space_file(tmp_path: Path):
    """Write a search-space YAML text to a file and return its path."""

    def write(text: str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def run_cli(*args: str):
    """Invoke ``autotune ARGS`` in-process (click's CliRunner)."""
    from click.testing import CliRunner

    from autotune.cli import main

    return CliRunner().invoke(main, list(args), prog_name="autotune")


def error_line(result) -> str:
    """The command failed with exactly one line of output, 'Error: ...', and no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


def _recipe_max_lr(setup) -> float:
    """The recipe's max_lr in a study's setup (a record, or a mapping of its parts)."""
    baseline = setup["baseline"] if isinstance(setup, dict) else setup.baseline
    return float(baseline["max_lr"])


@contextlib.contextmanager
def recipe_checks_keep():
    """Inside: the search's recipe checks keep every changed recipe without running it, for tests of what
    follows a kept check (the check itself runs for real in test_recipe_check.py)."""
    from autotune.study import _recipe_check as recipe_check

    def kept(setup, trial, recipe, max_lr, budgets, *, deadline=None, seeds=recipe_check.SEEDS):
        config = TrainConfig.from_dict(trial.user_attrs["config"])
        return recipe_check.RecipeCheck(
            trial=trial.number,
            config={**trial.user_attrs["config"], "max_lr": max_lr},
            recipe_config={**recipe.user_attrs["config"], "max_lr": float(_recipe_max_lr(setup))},
            effective_batch=config.effective_batch_size,
            recipe_effective_batch=budgets.baseline_effective_batch,
            noise_scale=budgets.noise_scale,
            samples_factor=1.0,
            steps=1,
            recipe_steps=1,
            seeds=[1],
            losses=[0.1],
            recipe_losses=[0.1],
            kept=True,
            reason=f"trial #{trial.number}: kept (a test's stand-in)",
            seconds=0.0,
            recipe_trial=recipe.number,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe_check, "run_check", kept)
        yield


# --- Finished studies ---------------------------------------------------------------------------------

V0_STUDY = "demo-v0"


@pytest.fixture
def finished_study(tmp_path: Path):
    """A finished demo study, as an earlier version wrote it (4 trials, the LR range test and a kept
    recipe check; tests/fixtures/study-v0.db), in a copy of its own: its SQLite URL and study name."""
    path = tmp_path / "study-v0.db"
    shutil.copyfile(FIXTURES / "study-v0.db", path)
    yield f"sqlite:///{path}", V0_STUDY


# tiny's baseline is batch 8, not among these choices; accumulation_steps has a space default.
TINY_STUDY_SPACE = (
    "effective_batch: free\nknobs:\n  batch_size: [16, 32, 64]\n  accumulation_steps: {choices: [1, 2], default: 2}\n"
)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One finished search of tiny, run once for the whole test run: the baseline and two guided trials,
    measured in their processes (pruning off, so all run). Its options, its SearchResult, its
    storage and its folder; a test that adds to it works on ``copy_study(tiny_study, tmp_path)``."""
    from autotune.study._loop import search
    from autotune.study._options import SearchOptions

    folder = tmp_path_factory.mktemp("tiny-study")
    space = folder / "space.yaml"
    space.write_text(TINY_STUDY_SPACE)
    storage = f"sqlite:///{folder / 'studies' / 'shared.db'}"
    options = SearchOptions(
        lr_find=False,
        workload=workload_spec(),
        storage=storage,
        space=space,
        n_trials=3,
        measure=FAST,
        seed=0,
        slow_fraction=0.0,
        pruning=False,
    )
    result = search(options)
    return {"options": options, "result": result, "storage": storage, "folder": folder}


def copy_study(shared: dict, folder: Path) -> dict:
    """``shared`` (tiny_study) in a copy of its storage under ``folder``: the same, with options on the copy."""
    source = Path(shared["storage"].removeprefix("sqlite:///"))
    target = folder / "copy" / source.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    storage = f"sqlite:///{target}"
    return {**shared, "storage": storage, "options": dataclasses.replace(shared["options"], storage=storage)}


def study_with_rates(storage_url: str, rates: dict[int, float], name: str = "challenged"):
    """A study whose trials measured ``rates`` (samples/s) once, #0 the baseline, ranked by throughput."""
    import optuna

    from autotune.store._storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(storage_url), direction="maximize")
    study.set_user_attr("objective", "throughput")
    study.set_user_attr("workload", "tests/workloads/tiny.py:workload")
    for number, rate in rates.items():
        attrs = {
            "config": TrainConfig(batch_size=8 + number).to_dict(),
            "status": "ok",
            "samples_per_second": rate,
            "throughput_cv": 0.01,
            "peak_memory_bytes": 2**20,
            "wall_seconds": 1.0,
        }
        if number == 0:
            attrs["baseline"] = True
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=rate, user_attrs=attrs))
    return study


# --- Trials answered from set figures -----------------------------------------------------------------


def measured_outcome(job, rate: float, *, peak_memory_bytes: int = 64 * 2**20, dataset_size: int = 512):
    """What a trial process of ``job`` reports when it runs at ``rate`` samples/s: its windows 1% either
    side of the rate (a 1% spread), each of 10 optimizer steps."""
    from autotune.runner import Status, TrialOutcome, WindowResult

    config = TrainConfig.from_dict(job.config)
    samples = 10 * config.effective_batch_size
    windows = []
    for index in range(job.measure.windows):
        window_rate = rate * (0.99 if index % 2 == 0 else 1.01)
        windows.append(
            WindowResult(
                index=index,
                steps=10,
                samples=samples,
                units=float(samples),
                seconds=samples / window_rate,
                data_wait_seconds=0.0,
                loss=1.0,
            )
        )
    return TrialOutcome(
        status=Status.OK,
        samples_per_second=rate,
        unit_per_second=rate,
        unit="samples",
        throughput_cv=0.01 if len(windows) > 1 else 0.0,
        peak_memory_bytes=peak_memory_bytes,
        data_wait_fraction=0.0,
        warmup_seconds=0.01,
        compile_seconds=0.0,
        loss_start=1.0,
        loss_end=1.0,
        dataset_size=dataset_size,
        cycle_momentum=True,
        adaptive_optimizer=False,
        device="cpu",
        torch_version="set figures",
        windows=windows,
        wall_seconds=1.0,
        startup_seconds=0.5,
    )


@dataclasses.dataclass
class SetFigures:
    """run_trial's stand-in: each job is answered by ``answer(job)``, a rate in samples/s (or a TrialOutcome,
    returned as it is), as a trial process would report it: the parent's decisions after each window (its
    slow threshold on the first, ``on_window``) apply as run_trial applies them. No process runs; an LR
    sweep is refused. Every call is kept in ``calls``: the job, its slow threshold and its deadline."""

    answer: Callable[[Any], Any]
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __call__(self, job, *, on_window=None, slow_below=None, deadline=None, on_wait=None):
        from autotune.runner import Status, TrialOutcome

        self.calls.append({"job": job, "slow_below": slow_below, "deadline": deadline, "at": time.monotonic()})
        if job.lr_sweep is not None:
            return TrialOutcome(status=Status.ERROR, reason="set figures: no LR sweep runs here")
        answer = self.answer(job)
        if isinstance(answer, TrialOutcome):
            return answer
        outcome = measured_outcome(job, float(answer))
        for window in outcome.windows:
            stop = None
            if window.index == 0 and slow_below is not None and window.units_per_second < slow_below:
                stop = (
                    Status.SLOW,
                    f"{window.units_per_second:.1f} samples/s in the first window, below the slow threshold "
                    f"{slow_below:.1f}",
                )
            elif on_window is not None:
                stop = on_window(window)
            if stop is not None:
                kept = outcome.windows[: window.index + 1]
                median = statistics.median(w.samples_per_second for w in kept)
                return dataclasses.replace(
                    outcome,
                    status=stop[0],
                    reason=stop[1],
                    windows=kept,
                    samples_per_second=median,
                    unit_per_second=median,
                )
        return outcome

    def jobs(self) -> list[Any]:
        return [call["job"] for call in self.calls]


@pytest.fixture
def set_figures(monkeypatch):
    """``set_figures(answer)``: from here on, every trial autotune would run in a process (the search's,
    the workload check's, a re-measurement's) is answered by SetFigures(answer) instead, so that what the
    search decides rests on set figures, never on this machine's speed. Returns the SetFigures."""
    import autotune
    import autotune.runner

    real = autotune.runner.run_trial
    # Every module imported first: none imports the stand-in while it is in place and keeps it after. Not
    # the runner's own (its trial server's guard exits any process but the server that imports it).
    for module in pkgutil.walk_packages(autotune.__path__, "autotune."):
        if not module.name.startswith("autotune.runner."):
            importlib.import_module(module.name)

    def install(answer: Callable[[Any], Any]) -> SetFigures:
        runs = SetFigures(answer)
        for name, module in list(sys.modules.items()):
            if name.startswith("autotune"):
                for attribute, value in list(vars(module).items()):
                    if value is real:  # under whatever name the module imported it
                        monkeypatch.setattr(module, attribute, runs)
        return runs

    return install


@pytest.fixture(autouse=True)
def _precisions_probed_as_fast(request, monkeypatch):
    """The search's plan probes the device's matmuls per precision and drops a precision slower than
    fp32 there; that depends on the CPU the tests run on (with bf16 instructions or without), so each
    test sees every precision as fast unless it is marked ``real_precision_probe``."""
    if request.node.get_closest_marker("real_precision_probe") is None:
        from autotune.training import _apply

        monkeypatch.setattr(_apply, "slow_precisions", lambda device, precisions: {})
