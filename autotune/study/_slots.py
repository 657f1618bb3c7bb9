"""Device slots (``--devices``): one trial process per device at a time, the slots sharing nothing.

A search or a worker given several devices runs one worker process per device (``autotune worker``
on the same study), each seeing only its own device: a CUDA slot's process has
``CUDA_VISIBLE_DEVICES`` set to that card alone, so its trials (and anything they start) cannot touch
another slot's card. The slots run the study's trials until it holds the trials asked for; the
process that started them waits for them, then closes the study (the re-measurement, the range test).
Each trial records the devices it ran on, as this machine names them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from autotune.exceptions import ParameterError

if TYPE_CHECKING:
    from autotune.knobs._device import DeviceInfo

SLOT_VARIABLE = "AUTOTUNE_DEVICES"  # a slot's devices, as the machine names them, for its trials' records
STOP_SECONDS = 60.0  # a slot's process told to stop (SIGTERM) has this long to end its trial, then is killed


def parse_devices(text: str, cuda_count: int | None = None) -> tuple[str, ...]:
    """``all`` (every CUDA device, else the CPU), ``cpu``, or a list such as ``cuda:0,cuda:1``: the
    slots, each checked (a device that is not there, one named twice, CPU mixed with CUDA)."""
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = text.strip().lower()
    if text == "all":
        return tuple(f"cuda:{index}" for index in range(cuda_count)) or ("cpu",)
    slots = tuple(part.strip() for part in text.split(",") if part.strip())
    if not slots:
        raise ParameterError("devices: expected all, cpu, or a list such as cuda:0,cuda:1", "devices")
    for slot in slots:
        match = re.fullmatch(r"cuda:(\d+)", slot)
        if slot != "cpu" and match is None:
            raise ParameterError(f"devices: {slot!r} is not cpu or cuda:N", "devices")
        if match is not None and int(match.group(1)) >= cuda_count:
            raise ParameterError(f"devices: {slot} is not there ({cuda_count} CUDA device(s) present)", "devices")
    repeated = sorted({slot for slot in slots if slots.count(slot) > 1})
    if repeated:
        raise ParameterError(f"devices: {', '.join(repeated)} named twice (one trial per device at a time)", "devices")
    if "cpu" in slots and len(slots) > 1:
        raise ParameterError(
            "devices: the CPU with CUDA devices (trials on two kinds of device are not ranked together)", "devices"
        )
    return slots


def slot_devices(device: DeviceInfo) -> list[str]:
    """The devices this process's trials run on, as the machine names them (a slot's, else its own)."""
    named = os.environ.get(SLOT_VARIABLE)
    return named.split(",") if named else [device.torch_device]


def slot_environment(slot: str, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The ``--device`` a slot's process takes and its environment: a CUDA slot sees its card alone
    (as ``cuda:0``; an index is mapped through a CUDA_VISIBLE_DEVICES already set)."""
    env = {**environ, SLOT_VARIABLE: slot}
    if slot == "cpu":
        return "cpu", env
    index = int(slot.partition(":")[2])
    visible = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
    return "cuda:0", env


def slot_command(
    study_name: str, storage: str, workload: str, device: str, target: int | None, timeout_seconds: float | None
) -> list[str]:
    """The ``autotune worker`` command line of one slot's process."""
    command = [sys.executable, "-m", "autotune.cli", "worker", "--study", study_name, "--storage", storage]
    command += ["--workload", workload, "--device", device]
    if target is not None:
        command += ["--until", str(target)]
    if timeout_seconds is not None:
        command += ["--timeout", f"{max(1.0, timeout_seconds):.0f}s"]
    return command


def run_slots(
    slots: Sequence[str],
    command_of: Callable[[str], list[str]],
    on_line: Callable[[str, str], None],
) -> dict[str, int]:
    """Start one process per slot (``command_of(device)``), pass on their output a line at a time
    (``on_line(slot, line)``) and wait for them all; their exit codes by slot. Ctrl-C or SIGTERM here
    stops them all (each ends its running trial as interrupted) before it goes on up."""
    processes: dict[str, subprocess.Popen[str]] = {}
    readers = []
    try:
        for slot in slots:
            device, env = slot_environment(slot, os.environ)
            process = subprocess.Popen(
                command_of(device), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            processes[slot] = process
            reader = threading.Thread(target=_relay, args=(slot, process, on_line), daemon=True)
            reader.start()
            readers.append(reader)
        for process in processes.values():
            process.wait()
    except BaseException:
        _stop(processes.values())
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
    return {slot: process.returncode for slot, process in processes.items()}


def _relay(slot: str, process: subprocess.Popen[str], on_line: Callable[[str, str], None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        on_line(slot, line.rstrip("\n"))


def _stop(processes: Iterable[subprocess.Popen[str]]) -> None:
    """SIGTERM to each slot's process (it ends its trial as interrupted), SIGKILL to any still alive later."""
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        process.send_signal(signal.SIGTERM)
    give_up = time.monotonic() + STOP_SECONDS
    for process in alive:
        try:
            process.wait(timeout=max(0.1, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
