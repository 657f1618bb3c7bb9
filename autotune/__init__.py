"""autotune: find the fastest way to train a PyTorch model on this machine, by measurement."""

import importlib.metadata

from autotune.exceptions import (
    AutotuneError,
    ConfigError,
    NoFeasibleTrialError,
    SearchSpaceError,
    StorageError,
    StudyError,
    UsageError,
    WorkloadError,
)
from autotune.export import Export, export_best
from autotune.knobs import SearchSpace, TrainConfig, load_space
from autotune.study import SearchOptions, SearchResult, search
from autotune.workload import Workload, load_workload

__version__ = importlib.metadata.version("autotune")

__all__ = [
    "AutotuneError",
    "ConfigError",
    "Export",
    "NoFeasibleTrialError",
    "SearchOptions",
    "SearchResult",
    "SearchSpace",
    "SearchSpaceError",
    "StorageError",
    "StudyError",
    "TrainConfig",
    "UsageError",
    "Workload",
    "WorkloadError",
    "export_best",
    "load_space",
    "load_workload",
    "search",
]
