"""What the training device can run: decides which knobs stay in the search space."""

from __future__ import annotations

import dataclasses
import platform
import re

import psutil

from autotune.exceptions import ParameterError
from autotune.knobs._table import unsupported_on


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One training device, as a trial process will see it."""

    type: str  # "cpu" or "cuda"
    index: int | None
    name: str
    total_memory_bytes: int  # CUDA: the card's memory; CPU: the machine's available memory
    bf16: bool
    compile: bool

    @property
    def torch_device(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    def describe(self) -> str:
        return f"{self.torch_device} ({self.name})"


def detect_device(requested: str = "auto") -> DeviceInfo:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    import torch

    requested = requested.strip().lower()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return DeviceInfo(
            type="cpu",
            index=None,
            name=platform.processor() or platform.machine() or "cpu",
            total_memory_bytes=psutil.virtual_memory().available,
            bf16=True,  # CPU autocast supports bfloat16 (slow without AVX512-BF16/AMX: measured)
            compile=True,
        )
    match = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if match:
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device {requested}: CUDA is not available in this PyTorch build or machine", "device"
            )
        index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ParameterError(
                f"device {requested}: only {torch.cuda.device_count()} CUDA device(s) present", "device"
            )
        properties = torch.cuda.get_device_properties(index)
        return DeviceInfo(
            type="cuda",
            index=index,
            name=properties.name,
            total_memory_bytes=int(properties.total_memory),
            bf16=bool(torch.cuda.is_bf16_supported()),
            compile=True,
        )
    raise ParameterError(f"device: expected auto, cpu, cuda or cuda:N, got {requested!r}", "device")


def unsupported_values(device: DeviceInfo) -> dict[str, dict[object, str]]:
    """Knob values this device cannot run, each with the reason printed when it is dropped."""
    return unsupported_on(device.type, device.bf16, device.name)
