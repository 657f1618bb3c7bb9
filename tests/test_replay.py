"""benchmarks/replay.py on a small set table: lookups draw from the recorded runs, the clock is charged
what a run cost, and each method picks by what it measured."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from autotune.knobs import TrainConfig
from autotune.runner import Status

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


replay = _module("replay")
table_module = _module("table")

BASE = TrainConfig(batch_size=8).to_dict()
RATES = {8: 100.0, 16: 180.0, 32: 260.0, 64: 250.0}  # 64 is no faster than 32


def _run(batch: int, rate: float, status: str = "ok", wall: float = 4.0) -> dict:
    return {
        "config": {**BASE, "batch_size": batch},
        "pass": 0,
        "status": status,
        "reason": "" if status == "ok" else status,
        "samples_per_second": rate,
        "windows": [rate * 0.95, rate, rate * 1.05],
        "unit_per_second": rate,
        "unit": "samples",
        "peak_memory_bytes": batch * 2**20,
        "warmup_seconds": 0.5,
        "compile_seconds": 0.0,
        "data_wait_fraction": 0.1,
        "dataset_size": 512,
        "loss_start": 2.0,
        "loss_end": 1.9,
        "wall_seconds": wall,
    }


@pytest.fixture
def table(tmp_path: Path):
    header = {
        "table": {
            "workload": "autotune.workload.demo:workload",
            "domains": {"batch_size": [8, 16, 32, 64, 128]},
            "baseline": BASE,
            "measure": {"windows": 3, "window_seconds": 0.5},
        }
    }
    runs = [_run(batch, rate) for batch, rate in RATES.items()] + [_run(128, 0.0, status="oom", wall=2.0)]
    path = tmp_path / "table.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [header, *runs]) + "\n")
    return replay.Table.load(path)


def test_the_table_knows_each_configs_true_figure_and_its_cost(table):
    assert table.best == pytest.approx(260.0)
    assert table.true_figure(replay.config_key({**BASE, "batch_size": 128})) == 0.0  # never ran to the end
    assert table.cost == pytest.approx(4 * 4.0 + 2.0)


def test_a_lookup_draws_windows_from_the_records_and_charges_the_clock(table):
    clock = replay.Clock()
    lookup = replay.Lookup(table, clock, random.Random(0))
    outcome = lookup(replay._Job({**BASE, "batch_size": 16}))
    assert outcome.status is Status.OK and len(outcome.windows) == 3
    assert all(171 <= w.samples_per_second <= 189 for w in outcome.windows)
    assert clock.seconds == pytest.approx(4.0)
    oom = lookup(replay._Job({**BASE, "batch_size": 128}))
    assert oom.status is Status.OOM and clock.seconds == pytest.approx(6.0)
    assert lookup(replay._Job({**BASE, "batch_size": 4})).status is Status.ERROR and lookup.missing == 1


def test_a_run_stopped_after_its_first_window_is_charged_less(table):
    clock = replay.Clock()
    lookup = replay.Lookup(table, clock, random.Random(0))
    outcome = lookup(replay._Job({**BASE, "batch_size": 8}), slow_below=1000.0)
    assert outcome.status is Status.SLOW and len(outcome.windows) == 1
    assert clock.seconds == pytest.approx(4.0 - 2 * 0.5)


def test_the_micro_batch_rule_stops_once_a_batch_is_no_faster(table):
    clock = replay.Clock()
    curve = replay.deepspeed_rule(table, replay.Lookup(table, clock, random.Random(0)), clock, random.Random(0), 0)
    assert curve[-1][1] == pytest.approx(260.0)  # 32, then 64 measured no faster: stopped
    assert clock.seconds == pytest.approx(4 * 4.0)


def test_lightnings_rule_takes_the_largest_batch_that_fits_and_hf_backs_off_from_the_largest(table):
    clock = replay.Clock()
    curve = replay.lightning_rule(table, replay.Lookup(table, clock, random.Random(0)), clock, random.Random(0), 0)
    assert curve[-1][1] == pytest.approx(250.0)  # 64: the largest that fitted, not the fastest
    clock = replay.Clock()
    curve = replay.hf_rule(table, replay.Lookup(table, clock, random.Random(0)), clock, random.Random(0), 0)
    assert curve[-1][1] == pytest.approx(250.0)  # 128 ran out of memory; 0.9 x 128 -> 64


def test_the_grid_ends_at_the_best_and_reached_says_when(table):
    clock = replay.Clock()
    curve = replay.grid_search(table, replay.Lookup(table, clock, random.Random(1)), clock, random.Random(1), 0)
    assert curve[-1][1] == pytest.approx(260.0)
    assert replay.reached(curve, 0.97 * 260.0) is not None
    assert replay.reached([(1.0, 100.0)], 200.0) is None


def test_a_product_table_lists_each_normalized_config_once():
    configs = table_module.product_configs(
        {"batch_size": [8, 16], "num_workers": [0, 2], "prefetch_factor": [2, 4]}, TrainConfig()
    )
    assert len(configs) == 2 * (1 + 2)  # without workers the prefetch factor cannot act: one config, not two
