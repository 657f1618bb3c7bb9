"""The guided search: its stages from the best config so far, the knobs it holds, its pruner, and the
note of what was left at the baseline."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from autotune.knobs._space import parse_space
from autotune.store._records import TrialStatus, write_trial
from autotune.study._guided import STAGE_ATTR, GuidedSampler, IncumbentPruner
from autotune.study._notes import kept_at_baseline

SPACE = parse_space(
    {
        "knobs": {
            "batch_size": {"low": 8, "high": 512, "log": True, "default": 8},
            "num_workers": {"choices": [0, 1, 2], "default": 0},
            "prefetch_factor": {"choices": [2, 4], "default": 2},
            "precision": {"choices": ["fp32", "bf16"], "default": "fp32"},
            "channels_last": {"choices": [False, True], "default": False},
            "compile": {"choices": ["off", "default"], "default": "off"},
            "optimizer_impl": {"choices": ["default", "foreach"], "default": "default"},
        }
    }
)
BASELINE = SPACE.baseline({})


def speed(config):
    """A machine where bf16 and channels_last help, the batch saturates at 128 and one worker helps."""
    batch = config.batch_size
    rate = 1000 * batch / (batch + 16) * (1.5 if config.precision == "bf16" else 1.0)
    rate *= 1.2 if config.channels_last else 1.0
    rate *= 1.1 if config.num_workers == 1 else 0.95 if config.num_workers == 2 else 1.0
    rate *= 0.5 if batch > 128 else 1.0  # past the cache
    return rate


def run(study, trials, projected=100.0, compile_seconds=None):
    """``trials`` trials of ``speed``, each recorded as the search records its figures."""

    def objective(trial):
        is_baseline = not study.get_trials(deepcopy=False)[:-1]
        config = BASELINE if is_baseline else SPACE.suggest(trial, BASELINE)
        rate = speed(config)
        write_trial(
            trial,
            config=config.to_dict(),
            status=TrialStatus.OK,
            samples_per_second=rate,
            unit_per_second=rate,
            projected_full_run_seconds=projected,
            compile_seconds=compile_seconds if config.compile != "off" else 0.0,
        )
        return rate

    study.optimize(objective, n_trials=trials)
    return study.get_trials(deepcopy=False)


def guided(seed=0):
    fallback = optuna.samplers.TPESampler(seed=seed)
    return GuidedSampler(SPACE, BASELINE, fallback)


def configs(trials):
    return [(t.user_attrs["config"]["batch_size"], t.user_attrs["config"]["precision"]) for t in trials]


def test_stages_go_numerics_first_then_the_batch_by_fours_then_the_loader():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=guided())
    trials = run(study, 9)
    seen = [
        {k: t.user_attrs["config"][k] for k in ("batch_size", "precision", "channels_last", "num_workers")}
        for t in trials
    ]
    assert seen[0] == {"batch_size": 8, "precision": "fp32", "channels_last": False, "num_workers": 0}
    assert seen[1]["precision"] == "bf16" and seen[1]["batch_size"] == 8  # numerics at the small batch
    assert seen[2]["channels_last"] is True and seen[2]["precision"] == "bf16"  # bf16 won: kept
    # the batch ladder by four (32, 128, 512), then filled in beside the best (256 down to 64)
    assert [s["batch_size"] for s in seen[3:7]] == [32, 128, 512, 256]
    assert seen[7]["batch_size"] == 64
    assert seen[8]["num_workers"] == 1 and seen[8]["batch_size"] == 128  # the loader, at the best batch
    assert [t.system_attrs[STAGE_ATTR] for t in trials[1:3]] == [0, 1]


def test_every_config_is_proposed_once_and_the_fallback_takes_over():
    study = optuna.create_study(direction="maximize", sampler=guided())
    trials = run(study, 24)
    guided_trials = [t for t in trials if STAGE_ATTR in t.system_attrs]
    keys = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in guided_trials]
    assert len(keys) == len(set(keys))  # no config proposed twice by the stages
    assert len(guided_trials) < len(trials) - 1  # the fallback sampler proposed the rest
    best = max(trials, key=lambda t: t.value)
    assert best.user_attrs["config"]["batch_size"] == 128
    assert best.user_attrs["config"]["precision"] == "bf16" and best.user_attrs["config"]["num_workers"] == 1


def test_a_resumed_study_goes_on_from_its_records():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(direction="maximize", sampler=guided(), storage=storage, study_name="s")
    first = run(study, 5)
    again = optuna.load_study(study_name="s", storage=storage, sampler=guided())
    later = run(again, 2)[5:]
    assert configs(later) == [(512, "bf16"), (256, "bf16")]  # the ladder where it stood, nothing repeated
    assert not set(configs(later)) & set(configs(first))


def test_compile_is_held_while_the_run_is_too_short_to_repay_it():
    sampler = guided()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials = run(study, 30, projected=100.0)  # 100 s: a 30 s compile cannot pay
    assert all(t.user_attrs["config"]["compile"] == "off" for t in trials)  # the fallback's proposals too
    held = sampler.held_knobs(trials)
    assert "compile" in held and "too short to repay a compile of about 30 s" in held["compile"]
    long_run = optuna.create_study(direction="maximize", sampler=guided())
    trials = run(long_run, 16, projected=10_000.0, compile_seconds=20.0)
    assert any(t.user_attrs["config"]["compile"] == "default" for t in trials)  # worth a try there


def test_incumbent_pruner_stops_a_trial_well_below_the_best():
    pruner = IncumbentPruner(margin=0.15)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: 100.0 + 0 * t.suggest_float("x", 0, 2), n_trials=1)
    slow, close = study.ask(), study.ask()
    slow.report(80.0, 0)
    close.report(90.0, 0)
    assert pruner.prune(study, study._storage.get_trial(slow._trial_id))
    assert not pruner.prune(study, study._storage.get_trial(close._trial_id))
    times = optuna.create_study(direction="minimize", pruner=pruner)
    times.optimize(lambda t: 100.0 + 0 * t.suggest_float("x", 0, 2), n_trials=1)
    late = times.ask()
    late.report(125.0, 0)  # 100 / 0.85 = 117.6 s: out
    assert pruner.prune(times, times._storage.get_trial(late._trial_id))


def test_kept_at_baseline_says_why_each_knob_stayed():
    study = optuna.create_study(direction="maximize", sampler=guided())
    trials = run(study, 12)
    best = max(trials, key=lambda t: t.value)
    chosen = best.user_attrs["config"]
    kept = kept_at_baseline(
        trials,
        chosen,
        BASELINE.to_dict(),
        ["batch_size", "precision", "channels_last", "compile", "optimizer_impl"],
        {"compile": "compile left at off: the full run is too short"},
        "images",
    )
    assert set(kept) == {"compile", "optimizer_impl"}  # the others moved
    assert kept["compile"] == "compile left at off: the full run is too short"
    assert (
        kept["optimizer_impl"].startswith("optimizer_impl left at default: ")
        or "no other value" in kept["optimizer_impl"]
    )


@pytest.mark.parametrize(("value", "expected"), [(8, [32, 16]), (512, [256]), (64, [256, 128, 32])])
def test_batch_ladder_jumps_by_four_inside_its_range(value, expected):
    assert guided().neighbours("batch_size", value, jump=True) == expected
    assert guided().neighbours("num_workers", 1) == [2, 0]
    assert guided().neighbours("precision", "fp32") == ["bf16"]
    assert not math.isnan(speed(BASELINE))


def test_a_held_effective_batch_moves_the_micro_batch_with_its_accumulation_and_goes_on():
    space, _ = parse_space(
        {"knobs": {"batch_size": [4, 8], "num_workers": [0, 1], "channels_last": [False, True]}}
    ).with_effective_batch(8)
    baseline = space.baseline({"batch_size": 8})
    sampler = GuidedSampler(space, baseline, optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial):
        config = baseline if trial.number == 0 else space.suggest(trial, baseline)
        write_trial(trial, config=config.to_dict(), status=TrialStatus.OK, samples_per_second=100.0 + trial.number)
        return 100.0 + trial.number

    study.optimize(objective, n_trials=5)
    guided_trials = [t for t in study.trials if STAGE_ATTR in t.system_attrs]
    seen = [(t.user_attrs["config"]["batch_size"], t.user_attrs["config"]["accumulation_steps"]) for t in study.trials]
    assert (4, 2) in seen  # the micro-batch of 4, twice per optimizer step
    assert len({json.dumps(t.user_attrs["config"], sort_keys=True) for t in guided_trials}) == len(guided_trials)
    assert any(t.user_attrs["config"]["num_workers"] == 1 for t in guided_trials)  # the stages went on


def test_after_the_stages_a_config_measured_already_is_drawn_again():
    space = parse_space({"knobs": {"num_workers": [0, 1, 2], "channels_last": [False, True]}})
    baseline = space.baseline({})
    fallback = optuna.samplers.TPESampler(seed=0, n_startup_trials=1, multivariate=True, group=True)
    study = optuna.create_study(direction="maximize", sampler=GuidedSampler(space, baseline, fallback))
    study.enqueue_trial(space.fixed_params(baseline))  # the baseline, as the search enqueues it

    def objective(trial):
        config = space.suggest(trial, baseline)
        write_trial(trial, config=config.to_dict(), status=TrialStatus.OK, samples_per_second=100.0)
        return 100.0 + config.num_workers

    study.optimize(objective, n_trials=6)  # six configs in all: each once
    keys = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in study.trials]
    assert len(set(keys)) == 6
