"""detect_device and the knob values a device cannot run."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch

from autotune.exceptions import UsageError
from autotune.knobs._device import DeviceInfo, detect_device, unsupported_values
from autotune.knobs._space import load_space

HAS_CUDA = torch.cuda.is_available()


def cuda_device(bf16: bool) -> DeviceInfo:
    return DeviceInfo(type="cuda", index=0, name="Tesla T4", total_memory_bytes=16 * 1024**3, bf16=bf16, compile=True)


def test_detect_device_cpu_fields():
    device = detect_device("cpu")
    assert device.type == "cpu"
    assert device.index is None
    assert device.torch_device == "cpu"
    assert device.is_cuda is False
    assert device.bf16 is True
    assert device.compile is True
    assert isinstance(device.name, str) and device.name
    assert isinstance(device.total_memory_bytes, int) and device.total_memory_bytes > 0
    assert device.describe() == f"cpu ({device.name})"


def test_detect_device_cpu_ignores_case_and_spaces():
    assert detect_device(" CPU ").type == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="auto picks CUDA on a machine that has it")
def test_detect_device_auto_is_cpu_without_cuda():
    # Available memory moves between calls; every other field must match the CPU's.
    auto = dataclasses.replace(detect_device("auto"), total_memory_bytes=0)
    assert auto == dataclasses.replace(detect_device("cpu"), total_memory_bytes=0)
    assert dataclasses.replace(detect_device(), total_memory_bytes=0) == auto
    assert auto.type == "cpu"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_detect_device_auto_is_cuda_with_cuda():
    device = detect_device("auto")
    assert device.type == "cuda"
    assert device.torch_device == f"cuda:{torch.cuda.current_device()}"
    assert device.total_memory_bytes == torch.cuda.get_device_properties(device.index).total_memory


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present")
@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "cuda:1"])
def test_detect_device_cuda_without_cuda(requested):
    message = f"device {requested}: CUDA is not available in this PyTorch build or machine"
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        detect_device(requested)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_detect_device_cuda_index_out_of_range():
    count = torch.cuda.device_count()
    message = f"device cuda:{count}: only {count} CUDA device(s) present"
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        detect_device(f"cuda:{count}")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda answering as a machine with two bf16-less GPUs would, so the CUDA branch runs anywhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda index: SimpleNamespace(name=f"Fake GPU {index}", total_memory=8 * 1024**3),
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)


def test_detect_device_fake_cuda_auto_and_cuda(fake_cuda):
    expected = DeviceInfo(
        type="cuda", index=0, name="Fake GPU 0", total_memory_bytes=8 * 1024**3, bf16=False, compile=True
    )
    assert detect_device("auto") == expected
    assert detect_device("cuda") == expected
    assert detect_device("cuda:0") == expected


def test_detect_device_fake_cuda_index(fake_cuda):
    device = detect_device("cuda:1")
    assert (device.index, device.name, device.torch_device) == (1, "Fake GPU 1", "cuda:1")


def test_detect_device_fake_cuda_index_out_of_range(fake_cuda):
    message = "device cuda:2: only 2 CUDA device(s) present"
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        detect_device("cuda:2")


def test_detect_device_fake_cuda_cpu_still_cpu(fake_cuda):
    assert detect_device("cpu").type == "cpu"


@pytest.mark.parametrize("requested", ["cuda:x", "cuda0", "cuda:-1"])
def test_detect_device_fake_cuda_malformed_index(fake_cuda, requested):
    with pytest.raises(UsageError):
        detect_device(requested)


@pytest.mark.parametrize("requested", ["tpu", "mps", "gpu", ""])
def test_detect_device_unknown_kind(requested):
    message = f"device: expected auto, cpu, cuda or cuda:N, got {requested!r}"
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        detect_device(requested)


def test_deviceinfo_cuda_by_hand():
    device = cuda_device(bf16=True)
    assert device.is_cuda
    assert device.torch_device == "cuda:0"
    assert device.describe() == "cuda:0 (Tesla T4)"


def test_unsupported_values_cpu():
    assert unsupported_values(detect_device("cpu")) == {
        "precision": {
            "tf32": "TF32 matmuls need a CUDA device",
            "fp16": "fp16 training uses a CUDA GradScaler",
        },
        "pin_memory": {True: "pinned memory only speeds up copies to a CUDA device"},
        "compile": {"reduce-overhead": "reduce-overhead relies on CUDA graphs"},
    }


def test_unsupported_values_cpu_keeps_bf16_and_pin_memory_false():
    dropped = unsupported_values(detect_device("cpu"))
    assert "bf16" not in dropped["precision"] and "fp32" not in dropped["precision"]
    assert False not in dropped["pin_memory"]
    assert "off" not in dropped["compile"] and "max-autotune" not in dropped["compile"]


def test_unsupported_values_cuda_without_bf16():
    assert unsupported_values(cuda_device(bf16=False)) == {"precision": {"bf16": "Tesla T4 has no bfloat16 support"}}


def test_unsupported_values_cuda_with_bf16():
    assert unsupported_values(cuda_device(bf16=True)) == {}


def test_unsupported_values_restrict_default_space_on_cpu():
    restricted, notes = load_space(None).restrict(unsupported_values(detect_device("cpu")))
    described = restricted.describe()
    assert described["precision"] == ["fp32", "bf16"]
    assert described["pin_memory"] is False
    assert described["compile"] == ["off", "default", "max-autotune"]
    assert len(notes) == 4


def test_unsupported_values_restrict_default_space_on_cuda_without_bf16():
    restricted, notes = load_space(None).restrict(unsupported_values(cuda_device(bf16=False)))
    assert restricted.describe()["precision"] == ["fp32", "tf32", "fp16"]
    assert notes == ["precision=bf16 dropped from the search: Tesla T4 has no bfloat16 support"]
