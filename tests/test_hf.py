"""autotune.export: an export as TrainingArguments, Lightning Trainer and Accelerator keyword
arguments and a PyTorch script, checked against the real objects built from them and the code run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import WORKLOADS, workload_spec
from torch import nn

from autotune.exceptions import UsageError
from autotune.export import accelerate_export, hf_export, lightning_export, torch_script
from autotune.export._export import default_out, export_format, render
from autotune.knobs._config import TrainConfig

# Knob sets the forms must carry; each is exported as tuned on the CPU unless a test says otherwise.
CONFIGS = {
    "fp32": {},
    "bf16-workers": {"precision": "bf16", "num_workers": 2, "prefetch_factor": 4, "persistent_workers": True},
    "compile-accumulation": {
        "compile": "max-autotune",
        "accumulation_steps": 4,
        "channels_last": True,
        "gradient_checkpointing": True,
        "batch_size": 16,
    },
    "bf16-compile-workers": {"precision": "bf16", "compile": "default", "accumulation_steps": 2, "num_workers": 1},
}
CUDA = "cuda:0 (NVIDIA H100 80GB HBM3)"


def make_document(
    knobs: dict[str, Any] | None = None,
    *,
    device: str = "cpu",
    total_steps: int | None = 8,
    epochs: float = 2,
    cycle_momentum: bool | None = None,
) -> dict[str, Any]:
    """An export document as export_best writes it (the sections these forms read)."""
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **(knobs or {})})
    return {
        "config": config.to_dict(),
        "measured": {"samples_per_second": 1234.5},
        "one_cycle": {
            "max_lr": config.max_lr,
            "total_steps": total_steps,
            "pct_start": 0.3,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
            "anneal_strategy": "cos",
            "cycle_momentum": cycle_momentum,
        },
        "full_run": {"epochs": epochs, "dataset_size": 64},
        "provenance": {"study": "tiny", "trial": 3, "device": device, "workload": workload_spec()},
    }


def run_code(form: dict[str, Any], **names: Any) -> dict[str, Any]:
    """Execute a form's code lines with ``names`` (model, train_dataset...) in scope; its namespace."""
    namespace = dict(names)
    exec(compile("\n".join(form["code"]), "<code>", "exec"), namespace)  # noqa: S102 - the export's own code
    return namespace


class Classifier(nn.Module):
    """A 3x3 convolution and a linear head on 3x4x4 images; records gradient_checkpointing_enable()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 2)
        self.checkpointing = False

    def gradient_checkpointing_enable(self, **_: Any) -> None:
        self.checkpointing = True

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.head(F.relu(self.conv(x)).flatten(1))
        return logits if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def images(size: int = 64) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 4, 4, generator=generator)
    return torch.utils.data.TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def image_loss(model: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


# --- Hugging Face TrainingArguments --------------------------------------------------------------


def training_arguments(tmp_path, form: dict[str, Any], **extra: Any):
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    pytest.importorskip("accelerate", reason="TrainingArguments needs accelerate (the hf extra)")
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), report_to="none", **form["TrainingArguments"], **extra
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_export_builds_training_arguments_carrying_every_knob(tmp_path, recwarn, name):
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **CONFIGS[name]})
    args = training_arguments(tmp_path, hf_export(make_document(CONFIGS[name])))
    assert args.per_device_train_batch_size == config.batch_size
    assert args.gradient_accumulation_steps == config.accumulation_steps
    assert args.learning_rate == config.max_lr
    assert args.dataloader_num_workers == config.num_workers
    assert args.dataloader_prefetch_factor == (config.prefetch_factor or 2 if config.num_workers else None)
    assert args.dataloader_persistent_workers == config.persistent_workers
    assert args.dataloader_pin_memory is False and args.dataloader_drop_last is True
    assert (args.bf16, args.fp16) == (config.precision == "bf16", False)
    assert args.tf32 is False
    assert args.torch_compile == (config.compile != "off")
    assert args.torch_compile_mode == (None if config.compile == "off" else config.compile)
    assert args.activation_checkpointing == args.gradient_checkpointing == config.gradient_checkpointing
    assert args.max_steps == 8
    assert args.use_cpu is True and args.device.type == "cpu"
    assert not [w for w in recwarn if "deprecated" in str(w.message)]  # the 5.x names, not the aliases


def test_hf_export_tf32_is_false_for_a_cpu_tuned_config_and_never_raises(tmp_path):
    # TrainingArguments(tf32=True) raises without an Ampere GPU; TF32 does not exist on the CPU.
    form = hf_export(make_document({"precision": "tf32"}))
    assert form["TrainingArguments"]["tf32"] is False
    assert training_arguments(tmp_path, form).tf32 is False


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16", "tf32"),
    [
        ("fp32", False, False, False),
        ("tf32", False, False, True),
        ("bf16", True, False, False),
        ("fp16", False, True, False),
    ],
)
def test_hf_export_cuda_tuned_precision_sets_bf16_fp16_and_an_explicit_tf32(precision, bf16, fp16, tf32):
    form = hf_export(make_document({"precision": precision}, device=CUDA))
    arguments = form["TrainingArguments"]
    assert (arguments["bf16"], arguments["fp16"], arguments["tf32"]) == (bf16, fp16, tf32)
    assert "use_cpu" not in arguments
    # TrainingArguments' tf32 leaves cuDNN convolutions at PyTorch's default (TF32): a line sets them.
    assert any(line.startswith(f"torch.backends.cudnn.allow_tf32 = {tf32}  #") for line in form["code"])


def test_hf_export_cuda_tuned_fp32_compile_turns_tf32_back_off_after_the_trainer(tmp_path):
    form = hf_export(make_document({"compile": "reduce-overhead", "pin_memory": True}, device=CUDA))
    code = form["code"]
    trainer_line = code.index(next(line for line in code if line.startswith("trainer = Trainer(")))
    assert code[trainer_line + 1].startswith("torch.backends.cuda.matmul.allow_tf32 = False  # after Trainer()")
    assert "torch.backends.cudnn.benchmark = True" in "\n".join(code)
    args = training_arguments(tmp_path, form)  # on this machine's device; no use_cpu needed for fp32
    assert args.dataloader_pin_memory is True and args.torch_compile_mode == "reduce-overhead"
    bf16 = hf_export(make_document({"compile": "default", "precision": "bf16"}, device=CUDA))
    assert not any("matmul.allow_tf32" in line for line in bf16["code"])  # Accelerate leaves TF32 alone with bf16


def test_hf_export_code_trains_with_one_cycle_over_max_steps(tmp_path):
    form = hf_export(make_document({"accumulation_steps": 2, "channels_last": True}, total_steps=8))
    args = training_arguments(tmp_path, form, save_strategy="no", disable_tqdm=True)
    dataset = [{"x": x, "labels": y} for x, y in images(64)]
    model = Classifier()
    namespace = run_code(form, model=model, train_dataset=dataset, args=args)
    scheduler = namespace["trainer"].lr_scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.total_steps == 8 and scheduler.last_epoch == 8  # stepped once per optimizer step, to the end
    assert namespace["trainer"].state.global_step == 8
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_hf_export_code_without_total_steps_counts_steps_as_the_trainer_does(tmp_path):
    # 70 samples, batch 8 (drop_last): 8 batches; 3 accumulated: 3 optimizer steps an epoch, the last one short.
    form = hf_export(make_document({"accumulation_steps": 3}, total_steps=None, epochs=2))
    assert "max_steps" not in form["TrainingArguments"] and form["TrainingArguments"]["num_train_epochs"] == 2
    args = training_arguments(tmp_path, form, save_strategy="no", disable_tqdm=True)
    namespace = run_code(
        form, model=Classifier(), train_dataset=[{"x": x, "labels": y} for x, y in images(70)], args=args
    )
    assert namespace["total_steps"] == 6
    assert namespace["trainer"].state.global_step == 6 and namespace["scheduler"].last_epoch == 6


# --- Lightning Trainer ---------------------------------------------------------------------------


def lightning_trainer(tmp_path, form: dict[str, Any], **overrides: Any):
    lightning = pytest.importorskip("lightning", reason="the lightning extra is not installed")
    arguments = {**form["Trainer"], **overrides}
    return lightning.Trainer(
        **arguments,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def lightning_module():
    """A fresh LightningModule class around Classifier; configure_optimizers comes from the export's code."""
    lightning = pytest.importorskip("lightning", reason="the lightning extra is not installed")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Classifier()

        def gradient_checkpointing_enable(self) -> None:
            self.net.gradient_checkpointing_enable()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, _index: int) -> torch.Tensor:
            return image_loss(self, batch)

    return Module()


@pytest.mark.parametrize("name", CONFIGS)
def test_lightning_export_builds_a_trainer_carrying_every_knob(tmp_path, name):
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **CONFIGS[name]})
    form = lightning_export(make_document(CONFIGS[name]))
    trainer = lightning_trainer(tmp_path, form)
    assert trainer.accumulate_grad_batches == config.accumulation_steps
    assert trainer.precision == {"fp32": "32-true", "bf16": "bf16-mixed"}[config.precision]
    assert trainer.max_epochs == 2 and trainer.num_devices == 1
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    loader = torch.utils.data.DataLoader(images(), **form["DataLoader"])
    assert (loader.batch_size, loader.num_workers, loader.drop_last) == (config.batch_size, config.num_workers, True)
    assert loader.prefetch_factor == (config.prefetch_factor or 2 if config.num_workers else None)
    assert loader.persistent_workers == config.persistent_workers
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)


@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", "32-true"), ("tf32", "32-true"), ("bf16", "bf16-mixed"), ("fp16", "16-mixed")]
)
def test_lightning_export_cuda_tuned_precision_and_tf32_lines(precision, expected):
    form = lightning_export(make_document({"precision": precision}, device=CUDA))
    assert form["Trainer"]["precision"] == expected
    assert form["Trainer"]["accelerator"] == "cuda" and form["Trainer"]["benchmark"] is True
    matmul = "high" if precision == "tf32" else "highest"
    assert f'torch.set_float32_matmul_precision("{matmul}")' in "\n".join(form["code"])
    assert f"torch.backends.cudnn.allow_tf32 = {precision == 'tf32'}" in "\n".join(form["code"])


def test_lightning_export_code_ends_with_configure_optimizers_when_no_knob_acts_on_the_model():
    code = lightning_export(make_document())["code"]
    assert code[-1].startswith('    return {"optimizer": optimizer, "lr_scheduler"')


def test_lightning_export_fractional_epochs_stop_at_total_steps():
    assert lightning_export(make_document(epochs=1.5, total_steps=6))["Trainer"]["max_steps"] == 6
    assert lightning_export(make_document(epochs=1.5, total_steps=None))["Trainer"]["max_epochs"] == 2


def test_lightning_export_code_fits_with_one_cycle_stepped_every_optimizer_step(tmp_path):
    form = lightning_export(
        make_document(
            {"accumulation_steps": 2, "channels_last": True, "gradient_checkpointing": True, "precision": "bf16"}
        )
    )
    model = lightning_module()
    namespace = run_code(form, model=model)
    assert namespace["model"] is model  # no compile: the module itself
    assert model.net.checkpointing
    assert model.net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    type(model).configure_optimizers = namespace["configure_optimizers"]
    trainer = lightning_trainer(tmp_path, form)
    trainer.fit(model, torch.utils.data.DataLoader(images(64), **form["DataLoader"]))
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    # 64 samples in batches of 8, 2 accumulated, 2 epochs: 8 optimizer steps, the schedule's whole length.
    assert trainer.estimated_stepping_batches == scheduler.scheduler.total_steps == 8
    assert scheduler.scheduler.last_epoch == 8 and trainer.global_step == 8
    assert scheduler.scheduler.cycle_momentum is True  # decided from AdamW's betas, the export left it open


def test_lightning_export_code_compiles_the_module_with_the_mode():
    form = lightning_export(make_document({"compile": "max-autotune"}, cycle_momentum=False))
    assert 'model = torch.compile(model, mode="max-autotune")' in form["code"]
    assert "cycle_momentum=False," in "\n".join(form["code"])
    model = lightning_module()
    compiled = run_code(form, model=model)["model"]  # torch.compile is lazy: nothing compiles until a call
    assert compiled is not model and compiled._orig_mod is model


# --- Accelerate Accelerator ----------------------------------------------------------------------


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one AcceleratorState per process, refusing a second mixed precision."""
    pytest.importorskip("accelerate", reason="the accelerate extra is not installed")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def accelerator(form: dict[str, Any]):
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin

    plugin = {"dynamo_plugin": TorchDynamoPlugin(**form["TorchDynamoPlugin"])} if "TorchDynamoPlugin" in form else {}
    return Accelerator(**form["Accelerator"], **plugin)


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_export_builds_an_accelerator_carrying_every_knob(fresh_accelerate_state, name):
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **CONFIGS[name]})
    form = accelerate_export(make_document(CONFIGS[name]))
    built = accelerator(form)
    assert built.mixed_precision == {"fp32": "no", "bf16": "bf16"}[config.precision]
    assert built.gradient_accumulation_steps == config.accumulation_steps
    assert built.device.type == "cpu"
    plugin = built.state.dynamo_plugin
    if config.compile == "off":
        assert "TorchDynamoPlugin" not in form and plugin.backend.value == "NO"
    else:
        assert (plugin.backend.value, plugin.mode) == ("INDUCTOR", config.compile)
    assert form["DataLoader"]["batch_size"] == config.batch_size
    assert form["DataLoader"]["num_workers"] == config.num_workers


@pytest.mark.parametrize(("precision", "mixed"), [("fp32", "no"), ("tf32", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_accelerate_export_cuda_tuned_mixed_precision_and_tf32_lines(precision, mixed):
    form = accelerate_export(make_document({"precision": precision, "compile": "default"}, device=CUDA))
    assert form["Accelerator"] == {"mixed_precision": mixed, "gradient_accumulation_steps": 1}
    code = "\n".join(form["code"])
    tf32 = precision == "tf32"
    assert f"torch.backends.cuda.matmul.allow_tf32 = {tf32}" in code
    assert f"torch.backends.cudnn.allow_tf32 = {tf32}" in code
    # Accelerate turns TF32 matmuls on under dynamo with mixed_precision "no": the fp32 line says so, after it.
    assert ("after Accelerator(): Accelerate turns TF32" in code) == (precision == "fp32")
    assert code.index("accelerator = Accelerator(") < code.index("allow_tf32")


def test_accelerate_export_code_trains_with_one_cycle_over_the_optimizer_steps(fresh_accelerate_state):
    form = accelerate_export(
        make_document(
            {"accumulation_steps": 2, "precision": "bf16", "channels_last": True, "gradient_checkpointing": True}
        )
    )
    model = Classifier()
    namespace = run_code(form, exported=form, model=model, train_dataset=images(64), compute_loss=image_loss)
    scheduler = namespace["scheduler"].scheduler
    # 64 samples in batches of 8, 2 accumulated, 2 epochs: 8 optimizer steps, the schedule's whole length.
    assert scheduler.total_steps == 8 and scheduler.last_epoch == 8
    assert namespace["accelerator"].mixed_precision == "bf16"
    assert model.checkpointing and model.conv.weight.is_contiguous(memory_format=torch.channels_last)


# --- The PyTorch script ----------------------------------------------------------------------------


def test_torch_script_runs_the_workload_for_a_few_steps(tmp_path):
    document = make_document({"batch_size": 16, "accumulation_steps": 2, "precision": "bf16"}, total_steps=None)
    script = tmp_path / "best_train.py"
    script.write_text(torch_script(document, script.name))
    result = subprocess.run(
        [sys.executable, str(script), "--max-steps", "3", "--save", str(tmp_path / "model.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # tiny: 512 samples, batches of 16, 2 accumulated: 16 optimizer steps an epoch, 2 epochs.
    assert lines[0].startswith("step 3/32: loss ")
    assert lines[1].endswith("samples/s over 3 steps (compile and warm-up included)")
    assert lines[2] == f"model saved to {tmp_path / 'model.pt'}"
    state = torch.load(tmp_path / "model.pt")
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_torch_script_carries_the_config_and_one_cycle():
    document = make_document(CONFIGS["compile-accumulation"], device=CUDA, cycle_momentum=True)
    namespace: dict[str, Any] = {}
    source = torch_script(document, "train.py")
    exec(compile(source, "train.py", "exec"), namespace)  # noqa: S102 - defines, runs nothing (no __main__)
    assert TrainConfig.from_dict(namespace["CONFIG"]) == TrainConfig.from_dict(document["config"])
    assert namespace["ONE_CYCLE"] == document["one_cycle"]
    assert (namespace["DEVICE"], namespace["EPOCHS"], namespace["WORKLOAD"]) == ("cuda:0", 2, workload_spec())
    assert "python train.py [--workload" in namespace["__doc__"]


def test_forms_name_the_workloads_own_knobs_in_a_comment():
    document = make_document({"workload_knobs": {"dataset.size": 256, "optimizer.fused": False}})
    line = "# your workload's own knobs, as tuned (pass them to your model, dataset and optimizer): "
    for export in (hf_export, lightning_export, accelerate_export):
        assert line + "dataset.size=256, optimizer.fused=False" in export(document)["code"]
    assert not any(line in code for code in hf_export(make_document())["code"])


def test_torch_script_passes_the_workloads_own_knobs_to_its_factories(tmp_path):
    workload = tmp_path / "sized.py"
    workload.write_text(
        "import torch.nn.functional as F\n"
        "from torch import nn\n"
        "from autotune import Workload\n"
        f"import sys; sys.path.insert(0, {str(WORKLOADS)!r})\n"
        "from tiny import Points\n"
        "def workload():\n"
        "    return Workload(model=lambda: nn.Linear(8, 2), dataset=lambda size: Points(size),\n"
        "                    loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]))\n"
    )
    document = make_document({"batch_size": 16, "workload_knobs": {"dataset.size": 64}}, total_steps=None)
    document["provenance"]["workload"] = f"{workload}:workload"
    script = tmp_path / "train.py"
    script.write_text(torch_script(document, script.name))
    result = subprocess.run(
        [sys.executable, str(script), "--save", str(tmp_path / "model.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # dataset.size 64 in batches of 16, 2 epochs: 8 steps (the workload's default 512 samples would make 64).
    assert re.fullmatch(r"step 8/8: loss \d+\.\d{4}", result.stdout.splitlines()[0])


# --- Formats and files -------------------------------------------------------------------------------


def test_render_framework_form_is_yaml_or_json_with_one_line_per_code_line():
    document = make_document(CONFIGS["compile-accumulation"], device=CUDA)
    form = hf_export(document)
    assert yaml.safe_load(render(document, "hf")) == form
    assert json.loads(render(document, "hf", as_json=True)) == form
    assert len(render(document, "hf").splitlines()) == 1 + len(form["TrainingArguments"]) + 1 + len(form["code"]) + 6


def test_forms_carry_the_autotune_provenance():
    document = make_document(CONFIGS["compile-accumulation"])
    for export in (hf_export, lightning_export, accelerate_export):
        assert export(document)["autotune"] == {
            "study": "tiny",
            "trial": 3,
            "device": "cpu",
            "samples_per_second": 1234.5,
            "effective_batch_size": 64,
        }


@pytest.mark.parametrize(
    ("out", "fmt", "expected"),
    [
        ("best.yaml", None, "yaml"),
        ("best.json", None, "json"),
        ("train.py", None, "torch"),
        (None, None, "yaml"),
        ("hf.json", "hf", "hf"),
        ("best.json", "lightning", "lightning"),
        ("run.py", "torch", "torch"),
    ],
)
def test_export_format_from_the_option_or_the_suffix(out, fmt, expected):
    from pathlib import Path

    assert export_format(Path(out) if out else None, fmt) == expected


def test_export_format_torch_needs_a_python_file():
    from pathlib import Path

    with pytest.raises(UsageError) as info:
        export_format(Path("out/best.yaml"), "torch")
    assert str(info.value) == "--format torch writes a Python script: --out must end in .py, got 'out/best.yaml'"


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        (None, "best.yaml"),
        ("json", "best.json"),
        ("hf", "best_hf.yaml"),
        ("lightning", "best_lightning.yaml"),
        ("accelerate", "best_accelerate.yaml"),
        ("torch", "best_train.py"),
    ],
)
def test_default_out_names_a_file_per_format(fmt, name):
    assert default_out(fmt) == name


def test_one_cycle_lines_decide_cycle_momentum_from_the_optimizer_when_the_export_does_not():
    code = "\n".join(lightning_export(make_document(cycle_momentum=None))["code"])
    assert 'cycle_momentum="betas" in optimizer.defaults' in code
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    line = next(line for line in code.splitlines() if "cycle_momentum=" in line)
    expression = line.split("cycle_momentum=", 1)[1].rstrip(",")
    assert eval(expression, {"optimizer": sgd}) is False  # noqa: S307 - plain SGD has no momentum to cycle
