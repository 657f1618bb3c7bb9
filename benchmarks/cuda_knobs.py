"""Every CUDA path of autotune.training, run for real: each precision (fp32, tf32, bf16, fp16 with
its GradScaler), pinned memory, channels_last and torch.compile (default, reduce-overhead), on
the demo's CNN over in-memory images (so the device, not the data, sets the pace).

    python benchmarks/cuda_knobs.py --out benchmarks/results/cuda_knobs.json

For each config: samples/s (median of 5 synchronised windows of 20 steps, after warm-up), peak
reserved memory, the final loss, the backend flags seen inside backend_flags() and whether
they were restored after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from autotune import training
from autotune.knobs._config import TrainConfig
from autotune.workload import Workload
from autotune.workload.demo import SmallCNN, classification_loss

CONFIGS = [
    {"precision": "fp32"},
    {"precision": "tf32"},
    {"precision": "bf16"},
    {"precision": "fp16"},
    {"precision": "bf16", "channels_last": True},
    {"precision": "bf16", "pin_memory": True, "num_workers": 4, "persistent_workers": True, "prefetch_factor": 4},
    {"precision": "bf16", "gradient_checkpointing": True},
    {"precision": "bf16", "compile": "default"},
    {"precision": "bf16", "compile": "reduce-overhead"},
]


def images() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(16384, 3, 32, 32, generator=generator), torch.randint(0, 10, (16384,), generator=generator)
    )


def measure(knobs: dict, batch_size: int, device: torch.device) -> dict:
    config = TrainConfig(batch_size=batch_size, max_lr=1e-3, **knobs)
    workload = Workload(model=lambda: SmallCNN(width=64), dataset=images, loss=classification_loss)
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats(device)
    flags_before = _flags()
    with training.backend_flags(config, device):
        flags_inside = _flags()
        run = training.Training(workload, config, device, total_steps=10_000)
        begin = time.perf_counter()
        for _ in range(3 if config.compile != "off" else 2):  # warm-up: compile, cuDNN autotune, workers
            loss = float(run.step())
        warmup_seconds = time.perf_counter() - begin
        rates = []
        for _ in range(5):
            torch.cuda.synchronize(device)  # window edge
            begin = time.perf_counter()
            for _ in range(20):
                loss_tensor = run.step()
            torch.cuda.synchronize(device)  # window edge: every step above has finished
            rates.append(20 * batch_size / (time.perf_counter() - begin))  # samples per second
        loss = float(loss_tensor)
    return {
        "config": {key: value for key, value in config.to_dict().items() if key in knobs or key == "batch_size"},
        "samples_per_second": round(statistics.median(rates), 1),
        "spread": round((max(rates) - min(rates)) / statistics.median(rates), 3),
        "warmup_seconds": round(warmup_seconds, 2),
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        "loss_end": loss,
        "grad_scaler": run.scaler is not None,
        "scaler_scale": None if run.scaler is None else float(run.scaler.get_scale()),
        "pinned_loader": run.loader.pin_memory,
        "flags_inside": flags_inside,
        "flags_restored": _flags() == flags_before,
    }


def _flags() -> dict:
    matmul, convolution = training.tf32_enabled()
    return {"matmul_tf32": matmul, "cudnn_tf32": convolution, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(device), "torch_version": torch.__version__, "runs": []}
    for knobs in CONFIGS:
        try:
            result = measure(knobs, args.batch_size, device)
        except Exception as exc:  # noqa: BLE001 - one failing path is a result, the others still run
            result = {"config": knobs, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(json.dumps(result), flush=True)
        results["runs"].append(result)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
