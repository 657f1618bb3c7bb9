"""Config files as autotune train reads them (an export-best document, a bare config), its options on a
checkpoint folder, and a listener that keeps what a run reports: for the tests of the full run
(test_full_run.py, test_run_plan.py, test_train_loop.py)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from conftest import workload_spec

from autotune.knobs._config import TrainConfig
from autotune.training._run_plan import TrainListener, TrainOptions

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


# The recipe's progress at another effective batch: an export at batch 64 of tiny's 512 points.
LARGER = TrainConfig(batch_size=64, max_lr=0.03)  # 8 steps per epoch of tiny's 512 points
PROGRESS = {"recipe_effective_batch": 16, "effective_batch": 64, "samples_factor": 1.5}
