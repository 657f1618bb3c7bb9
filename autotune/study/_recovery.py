"""No trial is lost when a search process dies (SIGKILL, a lost machine, a preempted job).

Every search process registers itself with the study and beats a heartbeat there while it
runs; every trial records the process that runs it (its ``host`` and ``pid`` user attributes).
Before its first trial and after each one, a search ends the trials whose process is gone as
``interrupted`` and enqueues each one's config again, once: on the same machine as soon as the
process is seen gone, from another machine once its heartbeat is older than the grace period.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StorageError
from autotune.store._liveness import GRACE_SECONDS, HEARTBEAT_SECONDS, SearchProcess
from autotune.store._liveness import PROCESS_KEY as _PROCESS_KEY
from autotune.store._liveness import gone as _gone
from autotune.store._records import TrialRecord, TrialStatus, write_trial
from autotune.store._storage import database_time, study_lock

if TYPE_CHECKING:
    import optuna

MAX_INTERRUPTIONS = 3  # a config whose trial was cut off this many times in a row is not run again
_OWNER_KEY = "autotune:owner"  # trial system attribute: the process running the trial


class Heartbeat:
    """Registers this process with the study and refreshes its heartbeat from a thread, until stopped."""

    def __init__(self, storage: Any, study_name: str) -> None:
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study_name)
        self.process = SearchProcess.current()
        self.phase = "trials"  # then "closing" (its trials done), then "done" (it has stopped)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autotune-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import sqlalchemy.exc

        self._stop.set()
        self._thread.join()
        try:
            self.set_phase("done")  # gone at once, for processes on other machines too
        except (sqlalchemy.exc.SQLAlchemyError, StorageError):  # unreachable: the heartbeat ages out instead
            pass

    def set_phase(self, phase: str) -> None:
        """Say what this process does now, at once: running trials, closing the study, done."""
        self.phase = phase
        self._beat()

    def _beat(self) -> None:
        value = {**self.process.to_json(), "heartbeat": database_time(self.storage), "phase": self.phase}
        self.storage.set_study_system_attr(self.study_id, self.process.key, value)

    def _run(self) -> None:
        unreachable = _unreachable_errors()
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except unreachable:  # the database (or the proxy) is busy or unreachable now: next beat
                continue


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a storage call raises while its database or its proxy cannot be reached: SQLAlchemy's
    OperationalError, autotune's StorageError once an outage outlasted its bound, gRPC's RpcError."""
    import sqlalchemy.exc

    errors: tuple[type[BaseException], ...] = (sqlalchemy.exc.OperationalError, StorageError)
    try:
        import grpc
    except ImportError:
        return errors
    return (*errors, grpc.RpcError)


def claim_trial(trial: optuna.Trial, process: SearchProcess) -> None:
    """Record which process runs ``trial``: the first thing a trial does."""
    trial.storage.set_trial_system_attr(trial._trial_id, _OWNER_KEY, process.key)
    write_trial(trial, host=process.host, pid=process.pid)


def process_alive(storage: Any, study_id: int, key: str | None) -> bool:
    """Whether the registered search process ``key`` still runs (by its pid here, by its heartbeat elsewhere)."""
    info = _registered(storage, study_id).get(key or "")
    return info is not None and _gone(info, database_time(storage)) is None


def others_running_trials(storage: Any, study_name: str, process: SearchProcess) -> list[dict[str, Any]]:
    """The other search processes on the study that are alive and still running trials."""
    study_id = storage.get_study_id_from_name(study_name)
    now = database_time(storage)
    return [
        info
        for key, info in _registered(storage, study_id).items()
        if key != process.key and info.get("phase", "trials") == "trials" and _gone(info, now) is None
    ]


def recover_interrupted(study: optuna.Study, storage: Any) -> list[int]:
    """End the running trials of search processes that are gone as ``interrupted``, and enqueue
    each one's config again. Returns their numbers. Safe to run from many processes at once."""
    import optuna

    running = (optuna.trial.TrialState.RUNNING,)
    if not study.get_trials(deepcopy=False, states=running):
        return []
    me = SearchProcess.current().key
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    with study_lock(storage, study.study_name):
        processes = _registered(storage, study_id)
        now = database_time(storage)
        others_alive = any(key != me and _gone(info, now) is None for key, info in processes.items())
        for trial in study.get_trials(deepcopy=False, states=running):  # read again, under the lock
            owner = trial.system_attrs.get(_OWNER_KEY)
            if owner == me:
                continue
            if owner is None:
                # Asked for, but cut off before it recorded its process: whose it is cannot be told,
                # so it is ended only when no other search process is alive.
                if others_alive:
                    continue
                why: str | None = "its search process stopped before the trial started"
            elif owner not in processes:
                continue
            else:
                why = _gone(processes[owner], now)
            if why is not None and _interrupt(study, storage, study_id, trial, why):
                recovered.append(trial.number)
    return recovered


class StaleTrialRetry:
    """Optuna's ``heartbeat_stale_trial_callback``, with autotune's lineage: a trial whose Optuna
    heartbeat (beaten by ``study.optimize`` from a thread per trial) is older than the grace period
    ends as ``interrupted`` with a reason, and its config is enqueued again once, with ``retry_of`` and
    ``interruptions`` (as ``recover_interrupted`` does) and Optuna's own ``failed_trial`` and
    ``retry_history`` system attributes (as ``optuna.storages.RetryHeartbeatStaleTrialCallback``).

    Optuna fails the stale trial, then calls back with it finished, when its attributes can no longer
    be written; so the reason is written just before, while it runs (``before_fail``, called by
    ``ReconnectingStorage._get_stale_trial_ids``). Only the process whose FAIL took effect is called
    back (``fail_stale_trials`` checks ``set_trial_state_values``' result), and ``recover_interrupted``
    acts only on trials still RUNNING and checks it too: on PostgreSQL the state change locks the
    trial's row (SELECT ... FOR UPDATE), so of the two, and of many processes, exactly one retries.

    Where Optuna's heartbeat cannot serve, autotune's own process heartbeat does: a trial cut off
    before Optuna recorded its first heartbeat is never stale to Optuna (it has no heartbeat row), and
    an ``autotune proxy`` (Optuna's gRPC storage proxy) carries no trial heartbeat at all.
    """

    def before_fail(self, storage: Any, trial_id: int) -> None:
        """The stale trial's status and reason, written while it still runs."""
        import optuna

        trial = storage.get_trial(trial_id)
        if trial.state != optuna.trial.TrialState.RUNNING:
            return
        _retry_attrs, suffix = _retry(trial)
        why = f"its trial heartbeat (Optuna's) was silent for more than {GRACE_SECONDS:.0f}s"
        try:
            storage.set_trial_user_attr(trial_id, "status", TrialStatus.INTERRUPTED.value)
            storage.set_trial_user_attr(trial_id, "reason", why + suffix)
        except optuna.exceptions.UpdateFinishedTrialError:  # its process finished it after all
            pass

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        import optuna

        retry, _suffix = _retry(trial)
        if retry is not None:
            history = [*trial.system_attrs.get("retry_history", []), trial.number]
            distributions = {name: trial.distributions[name] for name in trial.params}
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.WAITING,
                    params=dict(trial.params),
                    distributions=distributions,
                    user_attrs=retry,
                    system_attrs={
                        "fixed_params": dict(trial.params),  # as enqueue_trial records it
                        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                        "retry_history": history,
                    },
                )
            )
        reason = TrialRecord.of(trial).reason or "its trial heartbeat (Optuna's) went silent"
        _note(optuna.Trial(study, trial._trial_id), reason)


def mark_interrupted(trial: optuna.Trial, why: str) -> None:
    """The running trial of this process is being stopped (Ctrl-C, SIGTERM): record it, and run its config again."""
    retry, suffix = _retry(trial)
    if retry is not None:
        trial.study.enqueue_trial(dict(trial.params), user_attrs=retry)
    write_trial(trial, status=TrialStatus.INTERRUPTED, reason=why + suffix)
    _note(trial, why + suffix)


def _interrupt(study: optuna.Study, storage: Any, study_id: int, trial: Any, why: str) -> bool:
    import optuna

    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    retry, suffix = _retry(trial)
    try:
        storage.set_trial_user_attr(trial_id, "status", "interrupted")
        storage.set_trial_user_attr(trial_id, "reason", why + suffix)
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:  # its process finished it after all
        return False
    if retry is not None:
        study.enqueue_trial(dict(trial.params), user_attrs=retry)
    _note(optuna.Trial(study, trial_id), why + suffix)
    return True


def _retry(trial: Any) -> tuple[dict[str, Any] | None, str]:
    """The user attributes of the trial that runs an interrupted trial's config again (the baseline
    always), or None; and what to add to the interrupted trial's reason."""
    attrs = TrialRecord.of(trial)
    baseline = bool(attrs.baseline)
    if not attrs.config and not baseline:
        return None, ""  # cut off before its config was drawn: nothing to run again
    interruptions = attrs.interruptions + 1
    if interruptions >= MAX_INTERRUPTIONS and not baseline:
        return None, f"; not run again: its config was cut off {interruptions} times in a row"
    retry: dict[str, Any] = {"retry_of": trial.number, "interruptions": interruptions}
    if baseline:
        retry["baseline"] = True
    return retry, "; its config runs again"


def _note(trial: optuna.Trial, reason: str) -> None:
    from autotune.study._notes import explain_trial

    explain_trial(trial, "interrupted", reason)


def _registered(storage: Any, study_id: int) -> dict[str, dict[str, Any]]:
    attrs = storage.get_study_system_attrs(study_id)
    return {key: value for key, value in attrs.items() if key.startswith(_PROCESS_KEY)}
