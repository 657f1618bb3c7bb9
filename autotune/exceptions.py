"""The errors autotune raises for bad input; the CLI prints them as one line."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator, Mapping


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


class ParameterError(UsageError):
    """An argument is out of range; the message names the parameter, which the CLI renames to its option."""

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message)
        self.parameters = parameters

    def renamed(self, names: Mapping[str, str]) -> str:
        """The message with each named parameter replaced by ``names[parameter]`` (a CLI option)."""
        text = str(self)
        for parameter in self.parameters:
            if parameter in names:
                text = re.sub(rf"(?<![\w-]){re.escape(parameter)}(?![\w-])", names[parameter], text, count=1)
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the search stops the way Ctrl-C stops it."""


class CheckpointError(AutotuneError):
    """A checkpoint folder cannot be started in, resumed from or read."""


class TrainingError(AutotuneError):
    """A full run cannot go on: its loss became NaN or infinite."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers and ``kill`` send) stops the search the way Ctrl-C does: a
    ``Terminated`` (a KeyboardInterrupt) is raised where it runs. A second SIGTERM ends it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def first_line(exc: BaseException) -> str:
    """The first line of an error's own message, on one line (a driver's wrapped error: the driver's)."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split("\n")[0].split())
    return text or type(original).__name__
