"""The errors autotune raises for bad input; the CLI prints them as one line."""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune reports to the user as one line."""


class ConfigError(AutotuneError):
    """A TrainConfig value is out of range or of the wrong type."""


class SearchSpaceError(AutotuneError):
    """A search-space file is malformed."""


class WorkloadError(AutotuneError):
    """A workload cannot be imported, or is not a Workload."""


class StorageError(AutotuneError):
    """The study storage cannot be opened."""


class StudyError(AutotuneError):
    """A study does not exist, or cannot be resumed as asked."""


class NoFeasibleTrialError(AutotuneError):
    """A study has no finished trial that met every constraint."""


class UsageError(AutotuneError):
    """A command-line value (a size, a duration) cannot be parsed."""


class CheckpointError(AutotuneError):
    """A checkpoint folder cannot be started in, resumed from or read."""


class TrainingError(AutotuneError):
    """A full run cannot go on: its loss became NaN or infinite."""
