"""Device slots (``--devices``): the slots named and checked, each seeing only its card, every slot's
process stopped with the search, and a search whose trials run in its slots' workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from conftest import error_line, run_cli

SPACE = "knobs:\n  batch_size: [2, 4, 8]\n"


def test_parse_devices_names_the_slots_and_refuses_what_is_not_there():
    from autotune.exceptions import ParameterError
    from autotune.study._slots import parse_devices

    assert parse_devices("all", cuda_count=0) == ("cpu",)
    assert parse_devices("all", cuda_count=2) == ("cuda:0", "cuda:1")
    assert parse_devices(" cuda:1 , cuda:0", cuda_count=2) == ("cuda:1", "cuda:0")
    assert parse_devices("cpu", cuda_count=0) == ("cpu",)
    for text, expected in [
        ("cuda:2", "devices: cuda:2 is not there (2 CUDA device(s) present)"),
        ("cuda:0,cuda:0", "devices: cuda:0 named twice"),
        ("gpu0", "devices: 'gpu0' is not cpu or cuda:N"),
        ("cpu,cuda:0", "devices: the CPU with CUDA devices"),
        (",", "devices: expected all, cpu"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(expected)):
            parse_devices(text, cuda_count=2)


def test_a_cuda_slot_sees_its_card_alone_mapped_through_visible_devices():
    from autotune.study._slots import SLOT_VARIABLE, slot_environment

    device, env = slot_environment("cuda:1", {"PATH": "/bin"})
    assert device == "cuda:0" and env["CUDA_VISIBLE_DEVICES"] == "1" and env[SLOT_VARIABLE] == "cuda:1"
    device, env = slot_environment("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,6"})
    assert device == "cuda:0" and env["CUDA_VISIBLE_DEVICES"] == "6"
    device, env = slot_environment("cpu", {"CUDA_VISIBLE_DEVICES": "3"})
    assert device == "cpu" and env["CUDA_VISIBLE_DEVICES"] == "3" and env[SLOT_VARIABLE] == "cpu"


def test_cli_devices_and_device_together_are_refused(tiny_spec):
    line = error_line(run_cli("search", "--workload", tiny_spec, "--device", "cpu", "--devices", "cpu"))
    assert "give --device or --devices, not both" in line


# A slot's process: it says its pid in a file named after its slot, then sleeps.
_SLOT = (
    "import os, time; open(os.path.join({folder!r}, os.environ['AUTOTUNE_DEVICES']), 'w').write(str(os.getpid())); "
    "time.sleep(60)"
)
_RUNNER = """
import sys
from autotune.exceptions import sigterm_as_interrupt
from autotune.study._slots import run_slots
with sigterm_as_interrupt():
    run_slots(["cpu", "cuda:0"], lambda device: [sys.executable, "-c", sys.argv[1]], lambda slot, line: None)
"""


def test_run_slots_stops_every_slot_when_terminated(tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER, _SLOT.format(folder=str(tmp_path))])
    give_up = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 or any(not p.read_text() for p in tmp_path.iterdir()):
        assert runner.poll() is None and time.monotonic() < give_up
        time.sleep(0.05)
    slots = [psutil.Process(int(path.read_text())) for path in tmp_path.iterdir()]
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) != 0  # stopped, as Ctrl-C stops it
    for slot in slots:
        with pytest.raises(psutil.NoSuchProcess):
            slot.wait(timeout=10)
            slot.status()


def test_search_with_two_slots_runs_its_trials_in_slot_workers_and_closes_the_study(tmp_path, storage_url, tiny_spec):
    from autotune.runner import MeasureSettings
    from autotune.study._loop import search
    from autotune.study._options import SearchOptions

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    options = SearchOptions(
        workload=tiny_spec,
        storage=storage_url,
        study_name="slots",
        space=space,
        n_trials=3,
        measure=MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20),
        slow_fraction=0.0,
        device="cpu",
        devices=("cpu", "cpu"),  # two slots on one device take turns at its lock: the code path of two cards
    )
    result = search(options)
    study = optuna.load_study(study_name="slots", storage=storage_url)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert result.trials_run == 0  # this process ran none: the slots' workers did
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert os.getpid() not in pids and len(pids) >= 1
    assert all(t.user_attrs["devices"] == ["cpu"] for t in study.trials)
    assert all(t.user_attrs["device_kind"].startswith("cpu (") for t in study.trials)
    assert "lr_find" in study.user_attrs  # the study was closed here, once the slots were done
