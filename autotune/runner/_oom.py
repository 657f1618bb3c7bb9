"""Recognising out-of-memory errors, narrowly: everything else is re-raised as a real error."""

from __future__ import annotations

from typing import Any

_OOM_MESSAGES = (
    "out of memory",  # CUDA ("CUDA out of memory", "CUDA error: out of memory"), HIP, MPS
    "can't allocate memory",  # DefaultCPUAllocator
    "not enough memory",  # DefaultCPUAllocator on some builds, Windows
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "failed to allocate",
)


def is_oom_error(exc: BaseException) -> bool:
    """True for MemoryError, torch.OutOfMemoryError and allocator failures reported as RuntimeError."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch as _torch

        torch: Any = _torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(text in message for text in _OOM_MESSAGES)
    return False
