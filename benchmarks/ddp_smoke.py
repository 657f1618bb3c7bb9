"""A 2-rank data-parallel trial of the built-in demo on cuda:0 (both ranks on one GPU), written to
benchmarks/results/ddp_smoke-<date>.json.

Needs a CUDA machine: it has not been run where it was written (CPU-only, no GPU), so it is correct
by construction and by the 2-rank gloo trials that tests/test_ddp.py runs on the CPU, not by a run
of its own. With one GPU the two ranks share cuda:0; NCCL refuses two ranks on one GPU ("Duplicate
GPU detected"), so the default backend there is gloo over CUDA tensors. The script runs the trial
with the default backend, then once more with nccl forced (AUTOTUNE_DDP_BACKEND=nccl), and records
both outcomes: on a machine with two GPUs or more, the default already is nccl, one GPU per rank.

    python benchmarks/ddp_smoke.py            # about a minute on a GPU
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def trial(backend: str | None) -> dict:
    """One 2-rank trial of the demo on cuda:0 (``backend`` forced, or the default); its figures."""
    import torch

    from autotune.runner import MeasureSettings, TrialJob, run_trial
    from autotune.training._distributed import BACKEND_ENV

    if backend is None:
        os.environ.pop(BACKEND_ENV, None)
    else:
        os.environ[BACKEND_ENV] = backend
    job = TrialJob(
        workload="autotune.workload.demo:workload",
        config={"batch_size": 64, "world_size": 2, "precision": "bf16" if torch.cuda.is_bf16_supported() else "fp32"},
        device="cuda:0",
        measure=MeasureSettings(warmup_steps=2, windows=3, window_seconds=1.0, max_window_steps=50),
        timeout_seconds=300,
    )
    outcome = run_trial(job)
    return {
        "backend_forced": backend,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "device": outcome.device,
        "samples_per_second": outcome.samples_per_second,  # the group's: summed over both ranks
        "window_samples": [window.samples for window in outcome.windows],
        "window_steps": [window.steps for window in outcome.windows],
        "peak_memory_bytes": outcome.peak_memory_bytes,  # the larger rank's allocator peak
        "log_tail": outcome.log_tail[-1500:] if outcome.status.value != "ok" else "",
    }


def main() -> None:
    """Run both trials and write the JSON; exit 1 where no CUDA device is there, or the default trial failed."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks/ddp_smoke.py needs a CUDA device")
    result = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "default": trial(None),
        "nccl_forced": trial("nccl"),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ddp_smoke-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "log_tail"}, indent=2))
    print(f"written to {path}")
    sys.exit(0 if result["default"]["status"] == "ok" else 1)


if __name__ == "__main__":
    main()
