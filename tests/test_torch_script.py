"""autotune.export._torch_script: an export as a runnable PyTorch script, run for real."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import torch
from conftest import WORKLOADS, workload_spec
from export_documents import CONFIGS, CUDA, make_document

from autotune.export import torch_script
from autotune.knobs._config import TrainConfig


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


def script_namespace(document: dict[str, Any]) -> dict[str, Any]:
    """The script's module namespace, defined without running it (its __name__ is not __main__)."""
    namespace: dict[str, Any] = {"__name__": "best_train"}
    exec(compile(torch_script(document), "best_train.py", "exec"), namespace)  # noqa: S102 - the export's script
    return namespace


def test_torch_script_keeps_the_exported_schedule_unless_told_other_epochs(tmp_path, capsys):
    document = make_document({"batch_size": 16}, total_steps=8, epochs=2)
    main = script_namespace(document)["main"]
    main(["--max-steps", "2", "--save", str(tmp_path / "a.pt")])
    assert capsys.readouterr().out.splitlines()[0].startswith("step 2/8: loss ")  # the export's OneCycle length
    # Another length: the schedule spans the run made, 512 samples in batches of 16 for 1 epoch.
    main(["--max-steps", "2", "--epochs", "1", "--save", str(tmp_path / "b.pt")])
    assert capsys.readouterr().out.splitlines()[0].startswith("step 2/32: loss ")


def test_torch_script_reports_a_workload_that_cannot_be_loaded_as_one_error_line(tmp_path):
    main = script_namespace(make_document())["main"]
    with pytest.raises(SystemExit) as info:
        main(["--workload", str(tmp_path / "missing.py") + ":workload", "--save", str(tmp_path / "m.pt")])
    assert str(info.value.code).startswith("Error: ")
    assert "missing.py" in str(info.value.code)
    assert not (tmp_path / "m.pt").exists()


def test_torch_script_without_a_workload_in_the_export_requires_the_option(capsys):
    document = make_document()
    del document["provenance"]["workload"]
    namespace = script_namespace(document)
    assert namespace["WORKLOAD"] is None
    with pytest.raises(SystemExit) as info:
        namespace["main"]([])
    assert info.value.code == 2  # argparse's usage error
    assert "--workload" in capsys.readouterr().err


def test_torch_script_header_when_the_export_lacks_a_rate_and_a_device():
    document = make_document()
    del document["measured"]
    del document["provenance"]["device"]
    namespace = script_namespace(document)
    assert namespace["DEVICE"] == "cpu"
    assert namespace["__doc__"].splitlines()[0] == (
        "Train with the config autotune exported: study tiny, trial #3, throughput not measured on cpu."
    )
    rated = script_namespace(make_document(device=CUDA))["__doc__"].splitlines()[0]
    assert rated == f"Train with the config autotune exported: study tiny, trial #3, 1234.5 samples/s on {CUDA}."


def test_torch_script_steps_with_a_closure_when_the_search_found_one_was_needed(tmp_path, capsys):
    sam = workload_spec("unflagged", "sam.py")  # its optimizer asserts that its step got a closure
    document = make_document({"batch_size": 16}, total_steps=4)
    document["provenance"].update(workload=sam, step_closure=True)
    namespace = script_namespace(document)
    assert namespace["STEP_CLOSURE"] is True
    namespace["main"](["--max-steps", "2", "--save", str(tmp_path / "sam.pt")])
    assert capsys.readouterr().out.splitlines()[0].startswith("step 2/4: loss ")
    document["provenance"]["step_closure"] = None
    without = script_namespace(document)
    assert without["STEP_CLOSURE"] is False
    with pytest.raises(AssertionError, match="SAM requires a closure"):
        without["main"](["--max-steps", "1", "--save", str(tmp_path / "no.pt")])
