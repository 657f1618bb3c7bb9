"""Reading autotune's figures back out of Optuna trials (their user attributes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from autotune.knobs._table import MEMORY_NEUTRAL_KNOBS

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial



def status(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("status", "running" if trial.state.name == "RUNNING" else trial.state.name.lower())


def is_feasible(trial: FrozenTrial) -> bool:
    """Finished, status ok, and within every constraint (Optuna's rule: all values <= 0)."""
    return (
        trial.state.name == "COMPLETE"
        and trial.user_attrs.get("status") == "ok"
        and all(value <= 0 for value in trial.constraints.values())
    )


def rate(trial: FrozenTrial | dict[str, Any]) -> float:
    """A trial's throughput in the workload's unit per second (tokens/s, images/s, samples/s):
    ``unit_per_second``, or samples/s for a trial recorded without it."""
    attrs = trial if isinstance(trial, dict) else trial.user_attrs
    return float(attrs.get("unit_per_second") or attrs.get("samples_per_second") or 0.0)


def unit(trial: FrozenTrial | dict[str, Any]) -> str:
    """The workload's unit a trial counted ("samples" when it counted none)."""
    attrs = trial if isinstance(trial, dict) else trial.user_attrs
    return attrs.get("unit") or "samples"


throughput = rate  # what trials are ranked by when their run's length is not known


def best_trial(
    trials: Iterable[FrozenTrial], objective: str, budgets: Any = None, effective_batch: int | None = None
) -> FrozenTrial | None:
    """The feasible trial the objective ranks first: the shortest projected full run ("time"),
    or the highest throughput in the workload's unit ("throughput"). A trial that ran the
    baseline's own config is a second measurement of the baseline, not a candidate. ``budgets``
    projects each trial again (with the study's latest noise scale) instead of taking the figure
    recorded when it ran; ``effective_batch``: among the trials of that effective batch only."""
    trials = list(trials)
    baseline = baseline_trial(trials)
    feasible = [
        t
        for t in feasible_trials(trials)
        if baseline is None or not runs_baseline_config(t.user_attrs, baseline.user_attrs)
    ]
    if effective_batch is not None:
        feasible = [t for t in feasible if effective_batch_of(t) == effective_batch]
    if not feasible:
        return None
    if objective == "time":

        def projected(t: FrozenTrial) -> float | None:
            if budgets is not None:
                return budgets.project(t.user_attrs)
            return t.user_attrs.get("projected_full_run_seconds")

        timed = [(seconds, t) for t in feasible if (seconds := projected(t)) is not None]
        if timed:
            return min(timed, key=lambda pair: pair[0])[1]
    return max(feasible, key=rate)


def effective_batch_of(trial: FrozenTrial | Mapping[str, Any]) -> int:
    """A trial's samples per optimizer step (batch_size x accumulation_steps)."""
    attrs = trial if isinstance(trial, Mapping) else trial.user_attrs
    config = attrs.get("config") or {}
    return int(config.get("batch_size", 1)) * int(config.get("accumulation_steps", 1))


def runs_baseline_config(attrs: Mapping[str, Any], baseline_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial (its user attributes) that is not the baseline ran the baseline's own config,
    as a sampler may propose it again: its figure measures the baseline, never a speedup."""
    config = attrs.get("config")
    return not attrs.get("baseline") and config is not None and config == baseline_attrs.get("config")


def feasible_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [trial for trial in trials if is_feasible(trial)]


def baseline_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The baseline's measurement: the first baseline trial that finished ok (a re-run after a
    crash counts), else the first one that finished at all."""
    baselines = sorted(
        (t for t in trials if t.user_attrs.get("baseline") and t.state.is_finished()), key=lambda t: t.number
    )
    return next((t for t in baselines if t.user_attrs.get("status") == "ok"), baselines[0] if baselines else None)


def proven_out_of_memory(
    trials: Iterable[FrozenTrial], config: dict[str, Any], budget_bytes: int | None
) -> FrozenTrial | None:
    """An earlier trial that ran out of memory with the same memory-relevant knobs and a batch
    size no larger than ``config``'s, under a budget no larger than this one: ``config`` cannot fit."""
    for trial in trials:
        earlier = trial.user_attrs.get("config")
        if trial.user_attrs.get("status") != "oom" or not earlier or trial.user_attrs.get("skipped"):
            continue
        same_knobs = all(
            earlier.get(name) == value for name, value in config.items() if name not in MEMORY_NEUTRAL_KNOBS
        )
        earlier_budget = trial.user_attrs.get("memory_budget_bytes")
        budget_ok = earlier_budget is None or (budget_bytes is not None and budget_bytes <= earlier_budget)
        if same_knobs and budget_ok and config["batch_size"] >= earlier["batch_size"]:
            return trial
    return None


def measured_before(trials: Iterable[FrozenTrial], config: dict[str, Any]) -> FrozenTrial | None:
    """An earlier trial that ran exactly ``config`` and finished ok: a sampler proposing it again
    (TPE and random sampling may) is answered from that measurement, not run a second time."""
    for trial in trials:
        attrs = trial.user_attrs
        if (
            trial.state.name == "COMPLETE"
            and attrs.get("status") == "ok"
            and not attrs.get("skipped")
            and attrs.get("config") == config
        ):
            return trial
    return None


def crashed_before(trials: Iterable[FrozenTrial], config: dict[str, Any]) -> FrozenTrial | None:
    """An earlier trial whose process crashed (a segfault, an abort) with exactly ``config``."""
    for trial in trials:
        attrs = trial.user_attrs
        if attrs.get("crashed") and not attrs.get("skipped") and attrs.get("config") == config:
            return trial
    return None


def failed_compile(trials: Iterable[FrozenTrial], mode: str) -> FrozenTrial | None:
    """An earlier trial in which torch.compile in ``mode`` failed on this workload."""
    if mode == "off":
        return None
    for trial in trials:
        attrs = trial.user_attrs
        if (
            attrs.get("compile_failed")
            and not attrs.get("skipped")
            and (attrs.get("config") or {}).get("compile") == mode
        ):
            return trial
    return None


def status_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """How many trials ended each way (ok, oom, slow, ...), in order of first appearance."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[status(trial)] = counts.get(status(trial), 0) + 1
    return counts


# What a study was set up with, one study user attribute per part (optuna-dashboard shows each,
# and truncates long values, so one big attribute would not be readable there).
SETUP_KEYS = (
    "workload",
    "space",
    "baseline",
    "device",
    "torch_device",
    "budgets",
    "requested",
    "measure",
    "trial_timeout_seconds",
    "objective",
    "step_closure",
    "lr_scaling",
)


def searched_knobs(setup: Mapping[str, Any]) -> list[str]:
    """The knobs a study's recorded space searches (a list of choices or a range)."""
    return [name for name, domain in (setup.get("space") or {}).items() if isinstance(domain, (list, dict))]


def read_setup(study: Any) -> dict[str, Any]:
    """The recorded setup, or {} while none is complete.

    Each part is its own write, and another process may be recording a setup right now:
    ``write_setup`` writes "workload" last, so a study without it has no complete setup yet.
    """
    attrs = study.user_attrs
    if "workload" not in attrs:
        return {}
    return {key: attrs[key] for key in SETUP_KEYS if key in attrs}


def write_setup(study: Any, setup: dict[str, Any]) -> None:
    """Record setup parts, "workload" last (it marks the setup as complete, see ``read_setup``)."""
    for key in sorted(setup, key=lambda key: key == "workload"):
        study.set_user_attr(key, setup[key])
