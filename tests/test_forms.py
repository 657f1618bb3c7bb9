"""autotune.export._forms: what every framework form shares (the config, where it was tuned, the DataLoader
and OneCycle arguments, the run's length, provenance) and the code lines for what no framework has a field
for, checked on set documents and by running the lines."""

from __future__ import annotations

import pytest
import torch
from export_documents import CONFIGS, CUDA, make_document
from torch import nn

from autotune.export import _forms, accelerate_export, hf_export, lightning_export
from autotune.knobs._config import TrainConfig

# --- Shared by the forms (through them) ---------------------------------------------------------------


def test_forms_name_the_workloads_own_knobs_in_a_comment():
    document = make_document({"workload_knobs": {"dataset.size": 256, "optimizer.fused": False}})
    line = "# your workload's own knobs, as tuned (pass them to your model, dataset and optimizer): "
    for export in (hf_export, lightning_export, accelerate_export):
        assert line + "dataset.size=256, optimizer.fused=False" in export(document)["code"]
    assert not any(line in code for code in hf_export(make_document())["code"])


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


def test_one_cycle_lines_decide_cycle_momentum_from_the_optimizer_when_the_export_does_not():
    code = "\n".join(lightning_export(make_document(cycle_momentum=None))["code"])
    assert 'cycle_momentum="betas" in optimizer.defaults' in code
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    line = next(line for line in code.splitlines() if "cycle_momentum=" in line)
    expression = line.split("cycle_momentum=", 1)[1].rstrip(",")
    assert eval(expression, {"optimizer": sgd}) is False  # noqa: S307 - plain SGD has no momentum to cycle


# --- Where the config was tuned ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "expected", "cpu", "cuda"),
    [
        (CUDA, "cuda:0", False, True),
        ("cuda:1", "cuda:1", False, True),
        ("cpu", "cpu", True, False),
        ("cpu (x86_64, 2 cores)", "cpu", True, False),
        ("mps", "mps", False, False),
        (None, None, False, False),
        ("", None, False, False),
    ],
)
def test_tuned_device_is_the_torch_device_named_by_provenance(device, expected, cpu, cuda):
    document = make_document()
    document["provenance"]["device"] = device
    assert _forms.tuned_device(document) == expected
    assert (_forms.tuned_on_cpu(document), _forms.tuned_on_cuda(document)) == (cpu, cuda)


def test_tuned_device_of_an_export_without_provenance_is_unknown():
    document = make_document()
    del document["provenance"]
    assert _forms.tuned_device(document) is None
    assert not _forms.tuned_on_cpu(document) and not _forms.tuned_on_cuda(document)
    document["provenance"] = None
    assert _forms.tuned_device(document) is None


def test_export_config_reads_the_documents_config():
    document = make_document({"batch_size": 16, "precision": "bf16"})
    assert _forms.export_config(document) == TrainConfig.from_dict(document["config"])
    assert _forms.export_config(document).batch_size == 16


# --- DataLoader and OneCycle arguments ----------------------------------------------------------------


def test_dataloader_arguments_without_workers_shuffle_full_batches_and_leave_worker_options_out():
    arguments = _forms.dataloader_arguments(make_document({"batch_size": 16, "pin_memory": True}))
    # Pinned memory only where the config was tuned on CUDA: on the CPU it neither helps nor was measured.
    assert arguments == {"shuffle": True, "batch_size": 16, "num_workers": 0, "pin_memory": False, "drop_last": True}


def test_dataloader_arguments_with_workers_on_cuda_pin_and_prefetch():
    document = make_document({"num_workers": 3, "pin_memory": True, "persistent_workers": True}, device=CUDA)
    arguments = _forms.dataloader_arguments(document)
    assert arguments["shuffle"] is True and arguments["drop_last"] is True
    assert (arguments["num_workers"], arguments["pin_memory"]) == (3, True)
    assert arguments["prefetch_factor"] == 2  # DataLoader's own default, stated: the config left it open
    assert arguments["persistent_workers"] is True
    explicit = _forms.dataloader_arguments(make_document({"num_workers": 1, "prefetch_factor": 6}))
    assert (explicit["prefetch_factor"], explicit["persistent_workers"]) == (6, False)


def test_dataloader_arguments_build_a_loader_of_full_shuffled_batches():
    arguments = _forms.dataloader_arguments(make_document({"batch_size": 8}))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(20)), **arguments)
    assert [len(batch) for (batch,) in loader] == [8, 8]  # the last 4 samples dropped
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)


def test_one_cycle_arguments_take_the_exports_section():
    document = make_document(total_steps=40, cycle_momentum=False)
    document["one_cycle"].update(max_lr=0.5, pct_start=0.25, div_factor=10.0, anneal_strategy="linear")
    assert _forms.one_cycle_arguments(document) == {
        "max_lr": 0.5,
        "total_steps": 40,
        "pct_start": 0.25,
        "div_factor": 10.0,
        "final_div_factor": 1e4,
        "anneal_strategy": "linear",
        "cycle_momentum": False,
    }


def test_one_cycle_arguments_without_a_section_are_torchs_defaults_at_the_configs_max_lr():
    document = make_document({"max_lr": 0.003})
    del document["one_cycle"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), max_lr=0.003, total_steps=10
    )
    arguments = _forms.one_cycle_arguments(document)
    assert arguments == {
        "max_lr": 0.003,
        "total_steps": None,
        "pct_start": 0.3,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal_strategy": "cos",
        "cycle_momentum": None,
    }
    # The defaults are torch's: the schedule starts at max_lr / div_factor.
    assert scheduler.get_last_lr()[0] == pytest.approx(arguments["max_lr"] / arguments["div_factor"])


def test_one_cycle_lines_build_the_exports_schedule():
    document = make_document(total_steps=12, cycle_momentum=True)
    document["one_cycle"].update(max_lr=0.04, pct_start=0.5, div_factor=4.0, final_div_factor=100.0)
    lines = _forms.one_cycle_lines(document, "opt", "12", indent="    ")
    assert all(line.startswith("    ") for line in lines)
    namespace = {"torch": torch, "opt": torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)}
    exec(compile("if True:\n" + "\n".join(lines), "<lines>", "exec"), namespace)  # noqa: S102 - the form's code
    scheduler = namespace["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.total_steps == 12 and scheduler.cycle_momentum is True
    assert namespace["opt"].param_groups[0]["lr"] == pytest.approx(0.04 / 4.0)  # max_lr / div_factor
    for _ in range(5):  # pct_start 0.5 of 12 steps: the peak at step 5
        namespace["opt"].step()
        scheduler.step()
    assert namespace["opt"].param_groups[0]["lr"] == pytest.approx(0.04)


def test_optimizer_line_is_adamw_at_the_exported_max_lr():
    document = make_document({"max_lr": 0.02})
    document["one_cycle"]["max_lr"] = 0.015  # the checked max_lr the export carries wins over the config's
    line = _forms.optimizer_line(document, "net.parameters()", indent="  ")
    assert line.startswith("  optimizer = torch.optim.AdamW(net.parameters(), lr=0.015")
    assert line.endswith("  # or your optimizer")
    namespace = {"torch": torch, "net": nn.Linear(2, 2)}
    exec(compile(line.strip(), "<line>", "exec"), namespace)  # noqa: S102 - the form's code
    assert isinstance(namespace["optimizer"], torch.optim.AdamW)
    assert namespace["optimizer"].param_groups[0]["lr"] == 0.015


# --- The run's length, provenance, literals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("full_run", "epochs", "whole"),
    [
        ({"epochs": 2}, 2, 2),
        ({"epochs": 3.0}, 3, 3),
        ({"epochs": 1.5}, 1.5, 2),
        ({"epochs": 0.25}, 0.25, 1),
        ({"epochs": None}, 1, 1),
        ({}, 1, 1),
        (None, 1, 1),
    ],
)
def test_epochs_are_whole_when_they_can_be_and_whole_epochs_round_up(full_run, epochs, whole):
    document = make_document()
    document["full_run"] = full_run
    assert _forms.epochs(document) == epochs
    assert type(_forms.epochs(document)) is type(epochs)
    assert _forms.whole_epochs(document) == whole


def test_provenance_of_an_export_without_measured_or_provenance_sections():
    document = make_document({"batch_size": 4, "accumulation_steps": 3})
    del document["measured"], document["provenance"]
    assert _forms.provenance(document) == {
        "study": None,
        "trial": None,
        "device": None,
        "samples_per_second": None,
        "effective_batch_size": 12,
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("cos", '"cos"'),
        ('say "hi"', '"say \\"hi\\""'),
        (True, "True"),
        (False, "False"),
        (None, "None"),
        (3, "3"),
        (0.001, "0.001"),
        (1e4, "10000.0"),
        ([1, "a"], "[1, 'a']"),
    ],
)
def test_literal_is_the_python_literal_of_a_yaml_value(value, text):
    assert _forms.literal(value) == text
    assert eval(text) == value  # noqa: S307 - the literal reads back as the value


# --- Code lines for what no framework has a field for ----------------------------------------------------


def test_model_lines_in_the_order_the_trials_apply_them():
    config = TrainConfig(gradient_checkpointing=True, channels_last=True, compile="max-autotune")
    lines = _forms.model_lines(config)
    assert [line.split("  #")[0] for line in lines] == [
        "model.gradient_checkpointing_enable()",
        "model = model.to(memory_format=torch.channels_last)",
        'model = torch.compile(model, mode="max-autotune")',
    ]
    assert _forms.model_lines(config, checkpointing=False, compile_model=False) == [lines[1]]


def test_model_lines_for_a_config_that_acts_on_no_model_knob_are_none():
    assert _forms.model_lines(TrainConfig()) == []


def test_model_lines_run_on_a_model():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.checkpointing = False

        def gradient_checkpointing_enable(self) -> None:
            self.checkpointing = True

    model = Model()
    lines = _forms.model_lines(TrainConfig(gradient_checkpointing=True, channels_last=True, compile="default"))
    namespace = {"torch": torch, "model": model}
    exec(compile("\n".join(lines), "<lines>", "exec"), namespace)  # noqa: S102 - the form's code
    assert model.checkpointing
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert namespace["model"]._orig_mod is model  # compiled lazily: nothing compiles until a call


def test_workload_knob_lines_name_each_knob_as_a_literal():
    config = TrainConfig(workload_knobs={"dataset.max_length": 128, "model.norm": "rms"})
    assert _forms.workload_knob_lines(config) == [
        "# your workload's own knobs, as tuned (pass them to your model, dataset and optimizer): "
        'dataset.max_length=128, model.norm="rms"'
    ]
    assert _forms.workload_knob_lines(TrainConfig()) == []


@pytest.mark.parametrize(("precision", "tf32"), [("fp32", False), ("tf32", True), ("bf16", False), ("fp16", False)])
def test_cuda_backend_lines_set_tf32_only_for_precision_tf32_and_benchmark_on(precision, tf32):
    lines = _forms.cuda_backend_lines(TrainConfig(precision=precision))
    assert [line.split("  #")[0] for line in lines] == [
        f"torch.backends.cuda.matmul.allow_tf32 = {tf32}",
        f"torch.backends.cudnn.allow_tf32 = {tf32}",
        "torch.backends.cudnn.benchmark = True",
    ]


def test_mixed_precision_names_fp32_and_tf32_as_no_mixed_precision():
    assert _forms.MIXED_PRECISION == {"fp32": None, "tf32": None, "bf16": "bf16", "fp16": "fp16"}
