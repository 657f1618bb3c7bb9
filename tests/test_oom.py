"""is_oom_error: out-of-memory errors recognised narrowly, everything else stays a real error."""

from __future__ import annotations

import pytest
import torch

from autotune.runner import is_oom_error


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.OutOfMemoryError(""),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 1000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
    ids=repr,
)
def test_is_oom_error_true_for_allocation_failures(error):
    assert is_oom_error(error) is True


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("shape mismatch: value tensor of shape [8] cannot be broadcast to [4]"),
        RuntimeError(""),
        ValueError("out of memory"),  # the message alone does not make a non-RuntimeError an OOM
        KeyError("out of memory"),
        KeyError("batch"),
        TypeError("can't allocate memory"),
    ],
    ids=repr,
)
def test_is_oom_error_false_for_other_errors(error):
    assert is_oom_error(error) is False


def test_is_oom_error_subclass_of_runtime_error_with_oom_message():
    class AllocatorError(RuntimeError):
        pass

    assert is_oom_error(AllocatorError("Failed to allocate 4096 bytes")) is True


def test_is_oom_error_real_cpu_allocator_failure():
    # 2**62 bytes is beyond any address space: the allocator fails at once, nothing is allocated.
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom_error(caught.value) is True
