"""The guided search: what an expert tunes first, then a sampler for the rest.

From the best config measured so far (the baseline, at first), each knob in turn is moved one step,
the batch size first along its doubling ladder, then every other value of each other knob; a move
that measures faster becomes the new best, and its own neighbours follow. Once no neighbour of the
best is left to try, the fallback sampler (TPE) proposes the rest, from every trial so far. Each
config is proposed once; the study's records decide, so a resumed search, or several processes on
one study, go on from what is there.

Knobs that cannot gain are left at the baseline, and the study says why: a compile mode while the
projected full run is too short to repay its compile time (the sampler's proposals are held there
too). The pruner beside it stops a trial whose windows read well below the best's.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.knobs._config import TrainConfig
from autotune.knobs._table import INT_KNOBS, WORKER_KNOBS
from autotune.knobs._units import format_value
from autotune.store._records import TrialRecord

if TYPE_CHECKING:
    from autotune.knobs._space import SearchSpace

# The stages, in the order an expert goes: what a short probe settles at the baseline's small batch (the
# numerics and the memory layout), the batch up its ladder, the loader, the optimizer's implementation,
# what trades speed for memory, a compile mode, then the batch once more (one step each way from the
# best). Each stage moves one knob from the best config so far until no move is left, then the next.
STAGES = (
    "precision",
    "channels_last",
    "batch_size",
    "num_workers",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory",
    "optimizer_impl",
    "gradient_checkpointing",
    "accumulation_steps",
    "compile",
    "workload",  # the workload's own knobs
    "batch_size:final",
)
STAGE_ATTR = "autotune:guided_stage"  # a trial's system attribute: the stage that proposed it
REDRAWS = 8  # the fallback's draws of a config already measured before a uniform one is taken
UNIFORM_DRAWS = 200  # uniform draws of a config not measured yet before the fallback's own is kept
# A compile mode is tried only where its compile time is at most this share of the projected full run.
COMPILE_SHARE = 0.05
# Before any trial compiled here: what a compile is taken to cost (the CPU's inductor takes 20-60 s for a
# small model; a GPU's, similar).
COMPILE_SECONDS_GUESS = 30.0
GUIDED_NOTE_KEY = "guided_held"


class GuidedSampler(optuna.samplers.BaseSampler):
    """Coordinate moves from the best config so far, then ``fallback`` (see the module's text)."""

    def __init__(
        self,
        space: SearchSpace,
        baseline: TrainConfig,
        fallback: optuna.samplers.BaseSampler,
        *,
        maximize: bool = True,
    ) -> None:
        self.space = space
        self.baseline = baseline
        self.fallback = fallback
        self.maximize = maximize
        self._proposals: dict[int, tuple[int, dict[str, Any]]] = {}
        self._holding: dict[int, dict[str, str]] = {}  # each starting trial's held knobs, found once

    # --- Optuna's sampler interface ---------------------------------------------------------------

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)
        if "fixed_params" in trial.system_attrs:  # enqueued (the baseline, a recovered trial): as given
            return
        trials = study.get_trials(deepcopy=False)
        self._holding[trial._trial_id] = held = self.held_knobs(trials)
        proposal = self.next_config(trials, held)
        if proposal is not None:
            self._proposals[trial._trial_id] = proposal
            study._storage.set_trial_system_attr(trial._trial_id, STAGE_ATTR, proposal[0])

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if trial._trial_id in self._proposals:
            return {}
        return self.fallback.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial._trial_id in self._proposals or not search_space:
            return {}
        trials = study.get_trials(deepcopy=False)
        tried = _tried(trials)
        sampled: dict[str, Any] = {}
        for _ in range(REDRAWS):  # a config measured already is a trial spent for nothing: drawn again
            sampled = {
                name: self._held(study, trial, name, value)
                for name, value in self.fallback.sample_relative(study, trial, search_space).items()
            }
            drawn = self._config(_merged(self._current(trials), sampled))
            if drawn is None or _key(drawn) not in tried:
                return sampled
        return self._untried(search_space, tried, trials, self._holding.get(trial._trial_id, {})) or sampled

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        proposal = self._proposals.get(trial._trial_id, (0, {}))[1]
        if param_name in proposal:
            value = proposal[param_name]
            if param_distribution._contains(param_distribution.to_internal_repr(value)):
                return value
        value = self.fallback.sample_independent(study, trial, param_name, param_distribution)
        return self._held(study, trial, param_name, value)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._proposals.pop(trial._trial_id, None)
        self._holding.pop(trial._trial_id, None)
        self.fallback.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.fallback.reseed_rng()

    # --- the policy -------------------------------------------------------------------------------

    def next_config(
        self, trials: list[FrozenTrial], held: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """The next stage and config (its Optuna params): from the stage of the latest guided trial on,
        the first untried move of the stage's knob from the best config so far; None once every stage
        is through (or nothing has finished yet)."""
        best = self.incumbent(trials)
        if best is None:
            return None
        # with the configs proposed to trials still starting
        tried = _tried(trials) | {_key(self._full(p)) for _, p in self._proposals.values()}
        current = TrialRecord.of(best).config or {}
        held = self.held_knobs(trials) if held is None else held
        reached = max((int(t.system_attrs.get(STAGE_ATTR, 0)) for t in trials), default=0)
        for stage in range(reached, len(STAGES)):
            for name in self._stage_knobs(STAGES[stage]):
                if name in held:
                    continue
                for value in self.neighbours(name, _get(current, name), jump=STAGES[stage] == "batch_size"):
                    moved = self._config(_with(current, name, value))
                    if moved is not None and _key(moved) not in tried:
                        return stage, self._params(moved)
        return None

    def _current(self, trials: list[FrozenTrial]) -> dict[str, Any]:
        best = self.incumbent(trials)
        return dict(TrialRecord.of(best).config or {}) if best is not None else self.baseline.to_dict()

    def _untried(
        self,
        search_space: dict[str, BaseDistribution],
        tried: set[str],
        trials: list[FrozenTrial],
        held: dict[str, str],
    ) -> dict[str, Any] | None:
        """Uniform draws over ``search_space`` until one is a config not measured yet (None: none found)."""
        rng = random.Random(len(trials))
        for _ in range(UNIFORM_DRAWS):
            drawn = {name: _uniform(rng, dist) for name, dist in search_space.items()}
            drawn = {name: self.baseline.to_dict()[name] if name in held else v for name, v in drawn.items()}
            config = self._config(_merged(self._current(trials), drawn))
            if config is not None and _key(config) not in tried:
                return drawn
        return None

    def _stage_knobs(self, stage: str) -> list[str]:
        """The searched knobs a stage moves."""
        if stage == "workload":
            return [name for name in self.space.searched if self.space.knobs[name].is_workload_knob]
        name = stage.split(":")[0]
        return [name] if name in self.space.searched else []

    def incumbent(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        """The best trial that ran to the end with a figure (a duplicate answers for its original)."""
        finished = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.value is not None
            and math.isfinite(t.value)
            and (record := TrialRecord.of(t)).status == "ok"
            and not record.skipped
            and record.config
        ]
        if not finished:
            return None
        pick = max if self.maximize else min
        return pick(finished, key=lambda t: float(t.value or 0.0))

    def neighbours(self, name: str, value: Any, *, jump: bool = False) -> list[Any]:
        """The moves of ``name`` from ``value``: a size's next step up, then down (a batch range by
        doubling; with ``jump``, two steps up first: the ladder climbs by four and fills in after);
        every other choice of any other listed knob."""
        knob = self.space.knobs[name]
        if knob.choices is not None and all(_is_number(c) for c in (*knob.choices, value)):
            ladder = sorted(knob.choices)  # a list of sizes is a ladder too
        elif knob.choices is not None:
            return [c for c in knob.choices if c != value or type(c) is not type(value)]
        elif knob.low is not None and knob.high is not None and _is_number(value) and _is_int_knob(knob):
            low, high = int(knob.low), int(knob.high)
            steps = (value // 4, value // 2, value, value * 2, value * 4, low, high)
            ladder = sorted({v for v in steps if low <= v <= high})
        else:
            return []
        up = [c for c in ladder if c > value]
        down = [c for c in reversed(ladder) if c < value]
        return (up[1:2] if jump else []) + up[:1] + down[:1]

    def held_knobs(self, trials: list[FrozenTrial]) -> dict[str, str]:
        """Knobs left at the baseline for now, each with its reason."""
        held: dict[str, str] = {}
        knob = self.space.knobs.get("compile")
        if knob is not None and knob.is_searched:
            projected = self._projected_seconds(trials)
            compile_seconds = max(
                (s for t in trials if (s := TrialRecord.of(t).compile_seconds)), default=COMPILE_SECONDS_GUESS
            )
            if projected is None or compile_seconds > COMPILE_SHARE * projected:
                run = "not yet projected" if projected is None else f"projected at {projected:.0f} s"
                held["compile"] = (
                    f"compile left at {self.baseline.compile}: the full run ({run}) is too short to repay a compile "
                    f"of about {compile_seconds:.0f} s (tried once it is at most {COMPILE_SHARE:.0%} of the run)"
                )
        knob = self.space.knobs.get("gradient_checkpointing")
        if knob is not None and knob.is_searched and not any(TrialRecord.of(t).status == "oom" for t in trials):
            held["gradient_checkpointing"] = (
                f"gradient_checkpointing left at {format_value(self.baseline.gradient_checkpointing)}: no trial ran "
                "out of memory, and checkpointing only trades speed for memory"
            )
        return held

    def _held(self, study: optuna.Study, trial: FrozenTrial, name: str, value: Any) -> Any:
        """The fallback's proposal, except for a knob held at the baseline."""
        held = self._holding.get(trial._trial_id)
        if held is None:  # a trial enqueued with some of its params: held as found now
            held = self._holding[trial._trial_id] = self.held_knobs(study.get_trials(deepcopy=False))
        return self.baseline.to_dict()[name] if name in held else value

    def _projected_seconds(self, trials: list[FrozenTrial]) -> float | None:
        best = self.incumbent(trials)
        return None if best is None else TrialRecord.of(best).projected_full_run_seconds

    def _config(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """``values`` as the space would sample them (normalized, every knob inside its domain), or None.
        Workers switched on take the loader knobs' defaults from the space."""
        values = dict(values)
        self.space.derive_accumulation(values)  # a held effective batch: as the space samples it
        if values.get("num_workers"):
            for name in WORKER_KNOBS:
                knob = self.space.knobs.get(name)
                if knob is not None and knob.is_searched and not knob.contains(values.get(name)):
                    values[name] = knob.default if knob.contains(knob.default) else (knob.choices or (None,))[0]
        try:
            config = TrainConfig.from_dict(values, source="guided").normalized().to_dict()
        except Exception:  # noqa: BLE001 - a combination the config refuses is not proposed
            return None
        for name in self._params(config):
            if not self.space.knobs[name].contains(_get(config, name)):
                return None
        return config

    def _full(self, params: dict[str, Any]) -> dict[str, Any]:
        return _merged(self.baseline.to_dict(), params)

    def _params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config's values of the knobs the space samples (the loader's own only with workers)."""
        return {
            name: _get(config, name)
            for name in self.space.searched
            if (name in config or "." in name) and not (name in WORKER_KNOBS and not config["num_workers"])
        }


def _get(config: dict[str, Any], name: str) -> Any:
    """A knob's value in a config dict: a workload knob's ("model.width") under ``workload_knobs``."""
    return (config.get("workload_knobs") or {}).get(name) if "." in name else config.get(name)


def _with(config: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    if "." in name:
        return {**config, "workload_knobs": {**(config.get("workload_knobs") or {}), name: value}}
    return {**config, name: value}


def _merged(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    for name, value in params.items():
        config = _with(config, name, value)
    return config


def _uniform(rng: random.Random, distribution: BaseDistribution) -> Any:
    """One uniform draw (log-uniform on a log range) from an Optuna distribution."""
    if isinstance(distribution, CategoricalDistribution):
        return rng.choice(list(distribution.choices))
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        low, high = distribution.low, distribution.high
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if distribution.log else rng.uniform(low, high)
        if isinstance(distribution, IntDistribution):
            step = distribution.step
            return min(high, low + round((value - low) / step) * step)
        return value
    raise TypeError(f"no uniform draw from {distribution!r}")


def _is_int_knob(knob: Any) -> bool:
    return bool(knob.integer or knob.name in INT_KNOBS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tried(trials: list[FrozenTrial]) -> set[str]:
    """The configs the trials ran (or are running), as keys."""
    return {_key(config) for t in trials if (config := TrialRecord.of(t).config)}


def _key(config: dict[str, Any]) -> str:
    return json.dumps(TrainConfig.from_dict(config).normalized().to_dict(), sort_keys=True, default=str)


class IncumbentPruner(optuna.pruners.BasePruner):
    """Stops a trial whose windows so far read below the best finished trial's figure by more than
    ``margin`` (its mean, so one slow window does not end it): short windows for many configs, the
    full measurement for the few that could win. Not before ``min_trials`` have finished."""

    def __init__(self, margin: float = 0.3, min_trials: int = 1) -> None:
        self.margin = margin
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        values = list(trial.intermediate_values.values())
        if not values:
            return False
        finished = [
            t.value
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)
        ]
        if len(finished) < self.min_trials:
            return False
        mean = sum(values) / len(values)
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return mean < (1 - self.margin) * max(finished)
        return mean > min(finished) / (1 - self.margin)
