"""autotune.export._hf: an export as Hugging Face TrainingArguments keyword arguments and Trainer code,
checked against the real TrainingArguments built from them and the code run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from export_documents import CONFIGS, CUDA, Classifier, images, make_document, run_code

from autotune.export import hf_export
from autotune.knobs._config import TrainConfig


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


def test_hf_export_leaves_checkpointing_and_compile_to_the_trainer_and_codes_channels_last():
    form = hf_export(make_document({"gradient_checkpointing": True, "compile": "default", "channels_last": True}))
    code = "\n".join(form["code"])
    # TrainingArguments has fields for these two: the code does not apply them a second time.
    assert form["TrainingArguments"]["activation_checkpointing"] is True
    assert form["TrainingArguments"]["torch_compile_mode"] == "default"
    assert "gradient_checkpointing_enable" not in code and "torch.compile" not in code
    assert "model = model.to(memory_format=torch.channels_last)" in code


def test_hf_export_prefetch_factor_only_with_workers():
    # TrainingArguments raises on a prefetch factor without workers.
    assert "dataloader_prefetch_factor" not in hf_export(make_document({"prefetch_factor": 4}))["TrainingArguments"]
    with_workers = hf_export(make_document({"num_workers": 2, "prefetch_factor": 4}))["TrainingArguments"]
    assert with_workers["dataloader_prefetch_factor"] == 4


def test_hf_export_fractional_epochs_without_total_steps_are_num_train_epochs():
    arguments = hf_export(make_document(epochs=1.5, total_steps=None))["TrainingArguments"]
    assert arguments["num_train_epochs"] == 1.5 and "max_steps" not in arguments


def test_hf_export_code_imports_math_only_to_count_steps_itself():
    assert "import math" in hf_export(make_document(total_steps=None))["code"]
    code = hf_export(make_document(total_steps=8))["code"]
    assert "import math" not in code
    assert not any(line.startswith("total_steps =") for line in code)
    assert any("total_steps=8," in line for line in code)


def test_hf_export_cuda_tuned_code_asks_for_one_gpu_and_ends_with_train():
    code = hf_export(make_document(device=CUDA))["code"]
    assert any(line.startswith("# one GPU, as measured: run with CUDA_VISIBLE_DEVICES=") for line in code)
    assert code[-1] == "trainer.train()"
    cpu = hf_export(make_document())["code"]
    assert not any("CUDA_VISIBLE_DEVICES" in line or "torch.backends" in line for line in cpu)
    assert cpu[-1] == "trainer.train()"


def test_hf_export_learning_rate_is_the_exported_max_lr():
    document = make_document({"max_lr": 0.02})
    document["one_cycle"]["max_lr"] = 0.005  # the checked max_lr the export carries
    form = hf_export(document)
    assert form["TrainingArguments"]["learning_rate"] == 0.005
    assert any("max_lr=0.005," in line for line in form["code"])
