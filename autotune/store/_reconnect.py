"""A database server that restarts mid-search costs a wait and a line, not the search.

While a PostgreSQL or MySQL server is down (a restart takes seconds), every query of Optuna's
RDBStorage raises SQLAlchemy's OperationalError. ``ReconnectingStorage`` wraps the RDBStorage and
calls again, with backoff, for up to ``OUTAGE_SECONDS``: one line goes to stderr when the connection
is lost and one when it is back; past the bound, a one-line StorageError ends the call.

Calls that write are called again as they are. Most are idempotent (attributes, values, parameters
are upserts). Where the server committed a call but its reply was lost with the connection (the
connection must die between the commit and the reply), the second call answers honestly:

- ``create_new_trial``: a second trial is created. An enqueued one (a template) runs its config
  twice, and the second run is answered from the first as a duplicate; an asked one is left
  RUNNING with no process recorded, and is ended by ``recover_interrupted`` as cut off before it
  started. Telling the two calls apart would need a token in the trial row that Optuna's schema has
  no place for; a rare extra trial is the cheaper cost.
- ``set_trial_state_values``: the second call finds the state already set and says so (False, or
  UpdateFinishedTrialError), as it would if another process had set it: taking it for our own
  success could make two processes both retry one interrupted trial.
- ``create_new_study`` and ``delete_study`` answer DuplicatedStudyError and KeyError the same way.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from autotune.exceptions import StorageError, first_line

if TYPE_CHECKING:
    import optuna
    from optuna.study._frozen import FrozenStudy
    from optuna.study._study_direction import StudyDirection
    from optuna.trial import FrozenTrial, TrialState

OUTAGE_SECONDS = 60.0  # how long a call waits for the server to come back before the search gives up
_FIRST_WAIT = 0.2  # seconds before the first call again; doubled after each failure, up to _LONGEST_WAIT
_LONGEST_WAIT = 2.0  # short: a trial's heartbeat is beaten again soon after the server is back

_T = TypeVar("_T")

# RDBStorage's own methods that Optuna's _CachedStorage (the gRPC proxy's backend) calls.
_RETRIED_PRIVATE = frozenset({"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"})


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: Optuna wraps SQLAlchemy's errors in StorageInternalError)
    says the server could not be reached or dropped the connection, rather than refusing the query."""
    return _connection_error(exc) is not None


def _connection_error(exc: BaseException) -> BaseException | None:
    """The connection-level SQLAlchemy error in ``exc``'s chain of causes, or None."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return current
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return current
        current = current.__cause__ or current.__context__
    return None


class Outage:
    """Calls a function again while the server is unreachable, and says so once per outage, for every
    thread of the process (the trial loop, autotune's and Optuna's heartbeat threads)."""

    def __init__(self, where: str, seconds: float | None = None) -> None:
        self.where = where
        self.seconds = seconds
        self._lock = threading.Lock()
        self._lost_at: float | None = None  # time.monotonic() when the outage was first seen

    def call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(*args, **kwargs)``, called again through an outage of up to ``OUTAGE_SECONDS``."""
        wait = _FIRST_WAIT
        started: float | None = None
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                now = time.monotonic()
                started = now if started is None else started
                limit = OUTAGE_SECONDS if self.seconds is None else self.seconds
                if now - started >= limit:
                    raise StorageError(
                        f"storage {self.where}: connection lost for {now - started:.0f}s ({_first_line(exc)}); "
                        "gave up: finished trials are kept in the study"
                    ) from None
                self._lost(exc, limit)
                time.sleep(min(wait, max(0.0, started + limit - now)))
                wait = min(wait * 2, _LONGEST_WAIT)
                continue
            self._back()
            return result

    def _lost(self, exc: BaseException, limit: float) -> None:
        with self._lock:
            if self._lost_at is not None:
                return
            self._lost_at = time.monotonic()
        print(
            f"storage {self.where}: connection lost ({_first_line(exc)}); retrying for up to {limit:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    def _back(self) -> None:
        if self._lost_at is None:  # read without the lock: the common case costs nothing
            return
        with self._lock:
            lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            print(
                f"storage {self.where}: reconnected after {time.monotonic() - lost_at:.0f}s",
                file=sys.stderr,
                flush=True,
            )


class ReconnectingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's RDBStorage, each call made again while its database server is unreachable (see the
    module's docstring). Optuna's heartbeat methods are forwarded too, so that ``study.optimize``
    still beats each trial's heartbeat and fails stale trials; anything else (``engine``, ``url``,
    ``upgrade``) is the RDBStorage's own."""

    def __init__(self, storage: optuna.storages.RDBStorage, where: str) -> None:
        self.storage = storage
        self.outage = Outage(where)

    def __getattr__(self, name: str) -> Any:
        if name in ("storage", "outage"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        value = getattr(self.storage, name)
        if name in _RETRIED_PRIVATE:
            return functools.partial(self.outage.call, value)
        return value

    def retry(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(*args, **kwargs)`` (a query of autotune's own on ``engine``), through outages."""
        return self.outage.call(function, *args, **kwargs)

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.outage.call(self.storage.create_new_study, directions, study_name)

    def delete_study(self, study_id: int) -> None:
        return self.outage.call(self.storage.delete_study, study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        return self.outage.call(self.storage.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        return self.outage.call(self.storage.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.outage.call(self.storage.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.outage.call(self.storage.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.outage.call(self.storage.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.outage.call(self.storage.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.outage.call(self.storage.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.outage.call(self.storage.get_all_studies)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.outage.call(self.storage.create_new_trial, study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        return self.outage.call(self.storage.set_trial_param, trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.outage.call(self.storage.get_trial_id_from_study_id_trial_number, study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.outage.call(self.storage.get_trial_number_from_id, trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self.outage.call(self.storage.get_trial_param, trial_id, param_name)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self.outage.call(self.storage.set_trial_state_values, trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        return self.outage.call(self.storage.set_trial_intermediate_value, trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self.outage.call(self.storage.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self.outage.call(self.storage.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.outage.call(self.storage.get_trial, trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self.outage.call(self.storage.get_all_trials, study_id, deepcopy, states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self.outage.call(self.storage.get_n_trials, study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.outage.call(self.storage.get_best_trial, study_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self.outage.call(self.storage.get_trial_params, trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.outage.call(self.storage.get_trial_user_attrs, trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.outage.call(self.storage.get_trial_system_attrs, trial_id)

    def remove_session(self) -> None:
        self.storage.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self.storage.check_trial_is_updatable(trial_id, trial_state)

    # Optuna's heartbeat (BaseHeartbeat): study.optimize beats from a thread per trial, and fails
    # stale trials before each trial starts.

    def record_heartbeat(self, trial_id: int) -> None:
        return self.outage.call(self.storage.record_heartbeat, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = self.outage.call(self.storage._get_stale_trial_ids, study_id)
        before_fail = getattr(self.get_heartbeat_stale_trial_callback(), "before_fail", None)
        if before_fail is not None:  # the stale trial's reason is written while it still runs
            for trial_id in stale:
                before_fail(self, trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.storage.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.storage.get_heartbeat_stale_trial_callback()


def _first_line(exc: BaseException) -> str:
    """The first line of the driver's own message (what the server or the socket said)."""
    return first_line(_connection_error(exc) or exc)
