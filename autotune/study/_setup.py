"""The study's setup record: what a search was run with, checked against what a later search asks of the
same study."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StudyError
from autotune.knobs._space import diff_spaces
from autotune.knobs._table import KNOBS
from autotune.store import _records
from autotune.store._records import StudySetup, TrialRecord
from autotune.workload._workload import MOVED_SPECS

if TYPE_CHECKING:
    import optuna
from autotune.study._options import SearchOptions, SearchPlan, metric_name


def baseline_measured(storage: Any, study_name: str) -> tuple[int, bool | None] | None:
    """The study exists and its baseline ran fine (its workload was checked then): the dataset's
    size it saw (0 where it was not recorded), and whether its optimizer steps with a closure the
    workload did not declare; else None."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    baseline = _records.baseline_trial(study.get_trials(deepcopy=False))
    if baseline is None or _records.status(baseline) != "ok":
        return None
    return int(TrialRecord.of(baseline).dataset_size or 0), _records.read_setup(study).step_closure


def keep_study_objective(storage: Any, plan: SearchPlan) -> SearchPlan:
    """A resumed study keeps the objective it was started with (its direction is fixed)."""
    import optuna

    try:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
    except KeyError:
        return plan
    recorded = study.user_attrs.get("objective")
    if recorded is None:  # started before the objective was recorded: it maximised throughput
        recorded = "time" if study.direction == optuna.study.StudyDirection.MINIMIZE else "throughput"
    if recorded == plan.objective:
        return plan
    note = f"the study ranks by {recorded} (it was started so); --objective {plan.objective} applies to new studies"
    return dataclasses.replace(
        plan, objective="time" if recorded == "time" else "throughput", notes=[*plan.notes, note]
    )


def check_or_record_setup(study: optuna.Study, options: SearchOptions, plan: SearchPlan) -> None:
    """A resumed study must keep its workload and space; a new one records them, with what a worker
    joining it checks and takes (the identity, the options) and the trials its searches asked for.
    A joining worker's setup was read from the record: it writes nothing back."""
    recorded = _records.read_setup(study)
    setup = _setup_of(study, options, plan, recorded)
    if options.join and recorded.complete:
        changes = diff_spaces(recorded.space, setup.space)
        if changes:  # the worker rebuilt the space from the record: it must be the study's
            raise StudyError(f"study {plan.study_name!r}: this worker's space differs ({'; '.join(changes)})")
        if recorded.device != setup.device:
            plan.notes.append(f"study was started on {recorded.device}; this worker measures on {setup.device}")
        return
    if not recorded.complete:
        _records.write_setup(study, setup)
        study.set_metric_names([metric_name(plan.objective, plan.unit)])
        return
    if MOVED_SPECS.get(recorded.workload, recorded.workload) != setup.workload:  # a built-in's old name too
        raise StudyError(
            f"study {plan.study_name!r} tunes workload {recorded.workload!r}, not {setup.workload!r}; "
            "use another --study name"
        )
    # A knob added to autotune after the study started: its earlier trials ran it at its default.
    newer = [name for name in KNOBS if name not in recorded.space and name in setup.space]
    changes = diff_spaces({**{name: setup.space[name] for name in newer}, **recorded.space}, setup.space)
    if changes:
        raise StudyError(
            f"study {plan.study_name!r} was started with another search space ({'; '.join(changes)}); "
            "use another --study name or the original space"
        )
    if recorded.device != setup.device:
        plan.notes.append(f"study was started on {recorded.device}; this run measures on {setup.device}")
    if recorded.requested != setup.requested or recorded.measure != setup.measure:
        # export-best selects with the latest budgets; earlier trials keep the verdicts they were given.
        plan.notes.append("budgets or measurement settings differ from the study's last run; the new ones apply")
    for name in newer:
        plan.notes.append(
            f"{name} is newer than this study: its earlier trials ran it at {KNOBS[name].default!r}, "
            f"and from now on it is {setup.space[name]!r}"
        )
    _records.write_setup(study, setup, (*CURRENT_PARTS, "space") if newer else CURRENT_PARTS)


# The setup's parts a resumed search writes again (the space only where a knob is newer than the study).
CURRENT_PARTS = (
    "torch_device",
    "budgets",
    "requested",
    "measure",
    "trial_timeout_seconds",
    "lr_scaling",
    "identity",
    "search",
    "trials_target",
)


def _setup_of(study: optuna.Study, options: SearchOptions, plan: SearchPlan, recorded: StudySetup) -> StudySetup:
    """The setup this search runs with: what it records, or checks against the study's record."""
    from autotune.study._worker import identity, joined_options, trials_target

    return StudySetup(
        workload=options.workload,
        space=plan.requested_space,
        baseline=plan.baseline.to_dict(),
        device=plan.device.describe(),
        torch_device=plan.device.torch_device,
        budgets=plan.budgets.to_json(),
        # What the user asked for (the default memory budget follows the free memory of the day).
        requested={**plan.budgets.to_json(), "memory_budget_bytes": options.max_memory_bytes},
        measure=dataclasses.asdict(options.measure),
        trial_timeout_seconds=plan.trial_timeout_seconds,
        objective=plan.objective,
        step_closure=plan.step_closure,
        lr_scaling=options.lr_scaling,
        identity=identity(options.workload, plan.device),
        search=joined_options(options, plan),
        trials_target=trials_target(study, options, recorded.trials_target),
    )
