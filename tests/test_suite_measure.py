"""benchmarks/suite/measure.py: the suite's independent measurement, on the tiny workload."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from conftest import workload_spec

ROOT = Path(__file__).resolve().parents[1]


def _measure_module():
    spec = importlib.util.spec_from_file_location("suite_measure", ROOT / "benchmarks" / "suite" / "measure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # two rounds of three picks in trial processes: about 17 s
def test_every_pick_is_measured_each_round_in_a_rotated_order_and_a_failure_is_one_line():
    measure = _measure_module()
    picks = [
        {"label": "small", "config": {"batch_size": 8}},
        {"label": "accumulating", "config": {"batch_size": 16, "accumulation_steps": 2}},
        {"label": "broken", "config": {"batch_size": 8, "precision": "no-such-precision", "compile": "bogus"}},
    ]
    log = io.StringIO()
    measured = measure.measure(workload_spec(), picks, rounds=2, seconds=0.2, warmup_steps=1, timeout=120, log=log)
    small, accumulating, broken = measured
    for entry in (small, accumulating):
        assert len(entry["runs"]) == 2 and entry["error"] is None
        assert entry["samples_per_second"]["median"] > 0 and len(entry["samples_per_second"]["rounds"]) == 2
        assert entry["units_per_second"] == entry["samples_per_second"]  # tiny counts samples
        assert all(run["steps"] >= 1 for run in entry["runs"])
    # Round 2 starts one pick later than round 1 (the broken pick is not run again after it failed).
    order = [line.split(": ")[1] for line in log.getvalue().splitlines()]
    assert order == ["small", "accumulating", "accumulating", "small"]
    assert broken["runs"] == [] and "bogus" in broken["error"] and "\n" not in broken["error"]


def _suite_module():
    spec = importlib.util.spec_from_file_location("suite_run", ROOT / "benchmarks" / "suite" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a search, its export, and two rounds of short trials and long runs: about 25 s
def test_fidelity_interleaves_short_trials_and_long_runs_of_the_exported_pick(tmp_path):
    run = _suite_module()
    log = run.Log(tmp_path / "log.txt")
    pick = run.search_method(
        "autotune", workload_spec(), tmp_path, log, 1, 2 * 1024**3, ["--window-seconds", "0.2", "--windows", "2"]
    )
    assert "error" not in pick, pick

    fid = run.fidelity(workload_spec(), pick, tmp_path, log, rounds=2, long_seconds=0.5)

    assert "error" not in fid, fid
    assert len(fid["short_samples_per_second"]) == len(fid["long_samples_per_second"]) == 2
    # Round by round, then the median of two: their mean.
    ratios = [b / a for a, b in zip(fid["short_samples_per_second"], fid["long_samples_per_second"], strict=True)]
    assert fid["long_over_short_rounds"] == pytest.approx(ratios)
    assert fid["long_over_short"] == pytest.approx(sum(ratios) / 2)
    assert fid["long_over_stated"] * fid["stated_samples_per_second"] == pytest.approx(
        sum(fid["long_samples_per_second"]) / 2
    )
    assert fid["actual_over_projected_rounds"] == pytest.approx(
        [a / p for a, p in zip(fid["actual_seconds"], fid["projected_seconds"], strict=True)], rel=1e-3
    )
    assert len(fid["actual_seconds"]) == len(fid["projected_seconds"]) == 2
    # Interleaved: the second round runs the long one first.
    commands = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("$")]
    kinds = ["short" if "short_trial.py" in line else "long" for line in commands if "fidelity-" in line]
    assert kinds == ["short", "long", "long", "short"]


@pytest.mark.parametrize(
    ("low", "high", "bounds", "expected"),
    [
        (0.98, 1.03, {"at_least": 0.95, "at_most": 1.05}, "met"),
        (1.06, 1.20, {"at_least": 0.95, "at_most": 1.05}, "not met"),
        (0.80, 0.94, {"at_least": 0.95, "at_most": 1.05}, "not met"),
        (0.99, 1.08, {"at_least": 0.95, "at_most": 1.05}, "not resolved: the rounds span 0.990 to 1.080"),
        (0.97, 1.10, {"at_least": 0.97}, "met"),
        (0.90, 1.01, {"at_least": 0.97}, "not resolved: the rounds span 0.900 to 1.010"),
        (0.10, 0.20, {"at_most": 0.15}, "not resolved: the rounds span 0.100 to 0.200"),
    ],
)
def test_a_goal_is_met_only_when_every_round_meets_it(low, high, bounds, expected):
    assert _suite_module().verdict(low, high, **bounds) == expected


def test_goals_pair_the_picks_round_by_round():
    run = _suite_module()

    def pick(*rounds):
        return {"measured": {"units_per_second": {"median": sorted(rounds)[len(rounds) // 2], "rounds": list(rounds)}}}

    # The machine slowed in round 2: both picks read low there, their ratio holds.
    picks = {
        "autotune": pick(110, 55, 112),
        "grid": pick(100, 50, 100),
        "baseline": pick(100, 50, 100),
        **{peer: pick(120, 60, 120) for peer in run.PEERS},
    }
    check = run.goals(
        {
            "picks": {
                **picks,
                "grid": {**picks["grid"], "search_seconds": 10.0},
                "autotune": {**picks["autotune"], "search_seconds": 5.0},
            }
        }
    )
    assert check["of_oracle_rounds"] == pytest.approx([1.1, 1.1, 1.12])
    assert check["cost_of_grid"] == 0.5
    assert all(
        ratios == pytest.approx([110 / 120, 55 / 60, 112 / 120]) for ratios in check["over_peers_rounds"].values()
    )
    assert (
        run._goal("at least 0.97 of the oracle's throughput", check["of_oracle"], 0.97, check["of_oracle_rounds"])
        == "- at least 0.97 of the oracle's throughput: 1.100 (met)"
    )


def test_a_failed_run_is_named_by_its_exception_even_when_the_message_runs_over_many_lines():
    measure = _measure_module()
    stderr = "\n".join(
        [
            "W1201 warning: a compile fell back",
            "Traceback (most recent call last):",
            '  File "measure.py", line 209, in <module>',
            "    main()",
            "torch._inductor.exc.InductorError: LoweringException: ValueRangeError: Invalid ranges [0:-1]",
            "  target: aten.convolution.default",
            "  args[10]: [False, True, True]",
            "Found from : ",
            '   File "modeling_detr.py", line 1208, in forward',
        ]
    )
    assert (
        measure.exception_line(stderr)
        == "torch._inductor.exc.InductorError: LoweringException: ValueRangeError: Invalid ranges [0:-1]"
    )
    assert measure.exception_line("Killed\n") == "Killed"
    assert measure.exception_line("") is None


def test_a_peer_pick_that_fails_to_train_is_reported_with_its_error_and_autotune_meets_the_goal():
    run = _suite_module()
    trained = {"measured": {"units_per_second": {"median": 100.0, "rounds": [100.0, 100.0]}}}
    failed = {"measured": {"units_per_second": None, "error": "round 1: InductorError: Invalid ranges"}}
    picks = {
        "autotune": trained,
        "grid": trained,
        "baseline": trained,
        **{peer: trained for peer in run.PEERS},
        "pytorch-autotune": failed,
    }
    check = run.goals({"picks": picks})
    assert check["peers_failed"] == {"pytorch-autotune": "round 1: InductorError: Invalid ranges"}
    assert check["over_peers"]["pytorch-autotune"] is None

    # Where autotune's own pick failed too, nothing is claimed.
    check = run.goals({"picks": {**picks, "autotune": failed}})
    assert check["peers_failed"] == {}
