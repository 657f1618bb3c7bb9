"""The workloads in examples/: each one's baseline trains in a trial process and is measured in the
example's unit; in the slow run (``-m slow``), each one's search runs to the end with no trial in error,
and its export measures the example's unit. Real trial processes, kept short (short windows).

The Hugging Face examples need the ``examples`` extra (``pip install -e ".[examples]"``) and skip,
saying so, without it. Models are built from small configs: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from autotune import SearchOptions, export_best, search
from autotune.runner import MeasureSettings, Status, TrialJob, run_trial
from autotune.study._plan import plan_search

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)
NEEDS = {  # example -> (packages it imports beyond torch, its unit)
    "text": (("transformers",), "tokens"),
    "detection": (("transformers", "scipy"), "images"),
    "llm_lora": (("transformers", "peft"), "tokens"),
    "vision_sam": ((), "images"),
    "multitask": ((), "sequences"),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub access: the examples build their models from configs (trial processes inherit this)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _require(packages: tuple[str, ...]) -> None:
    for package in packages:
        pytest.importorskip(package, reason=f"{package} is not installed: pip install -e '.[examples]'")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(NEEDS))
def test_example_baseline_trains_in_a_trial_process_and_is_measured_in_its_unit(name, tmp_path):
    packages, unit = NEEDS[name]
    _require(packages)
    options = SearchOptions(workload=f"{EXAMPLES / name}.py:workload", space=_without_compile(name, tmp_path))
    plan = plan_search(options)
    outcome = run_trial(TrialJob(workload=options.workload, config=plan.baseline.to_dict(), measure=FAST))
    assert outcome.status is Status.OK, outcome.reason + outcome.log_tail
    assert outcome.unit == unit
    assert outcome.unit_per_second is not None and outcome.unit_per_second > 0


@pytest.mark.slow  # three trials, the side-by-side re-measurement and the export: about 10 to 45 s each
@pytest.mark.parametrize("name", list(NEEDS))
def test_example_search_and_export_run_without_trial_errors(name, tmp_path):
    packages, unit = NEEDS[name]
    _require(packages)
    storage = f"sqlite:///{tmp_path / 'examples.db'}"
    options = SearchOptions(
        workload=f"{EXAMPLES / name}.py:workload",
        storage=storage,
        n_trials=3,
        lr_find=False,
        space=_without_compile(name, tmp_path),
        measure=FAST,
        seed=0,
        device="cpu",
    )
    result = search(options)

    assert result.baseline is not None
    assert result.baseline.user_attrs["status"] == "ok", result.baseline.user_attrs["reason"]
    reasons = {
        t.number: t.user_attrs.get("reason")
        for t in _trials(storage, result.study_name)
        if t.user_attrs.get("status") == "error"
    }
    assert reasons == {}
    assert result.status_counts.get("error", 0) == 0

    export = export_best(result.study_name, storage, out=tmp_path / "best.yaml")
    assert export.document["measured"]["unit"] == unit
    assert export.document["measured"]["unit_per_second"] > 0
    assert (tmp_path / "best.yaml").is_file()


def _without_compile(name: str, folder: Path) -> Path:
    """The example's own space with torch.compile off: compiling takes tens of seconds per trial on
    a CPU (the committed results in benchmarks/results/examples/ include compiled trials)."""
    document = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    document["knobs"]["compile"] = "off"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _trials(storage: str, study_name: str):
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage).trials


def test_text_count_excludes_padding():
    _require(("transformers",))
    text = _example("text")
    samples = [
        {
            "input_ids": torch.arange(1, 1 + length),
            "features": torch.zeros(text.NUM_FEATURES),
            "target": torch.tensor(0.0),
        }
        for length in (3, 7, 5)
    ]
    batch = text.collate(samples)
    assert batch["input_ids"].shape == (3, 7)  # padded to the longest in the batch
    assert batch["attention_mask"].tolist() == [[1] * 3 + [0] * 4, [1] * 7, [1] * 5 + [0] * 2]
    assert text.real_tokens(batch) == 3 + 7 + 5
    assert batch["input_ids"][0, 3:].tolist() == [text.PAD] * 4


def test_detection_collate_pads_images_and_keeps_each_images_boxes():
    _require(("transformers",))
    detection = _example("detection")
    dataset = detection.Shapes(size=4)
    batch = detection.collate([dataset[i] for i in range(4)])
    heights = [dataset[i]["image"].shape[1] for i in range(4)]
    assert batch["pixel_values"].shape[:2] == (4, 3)
    assert batch["pixel_values"].shape[2] == max(heights)
    assert batch["pixel_mask"][:, :, 0].sum(dim=1).tolist() == heights
    assert [len(target["boxes"]) for target in batch["labels"]] == [len(dataset[i]["class_labels"]) for i in range(4)]
    for target in batch["labels"]:
        assert set(target) == {"class_labels", "boxes"}
        assert target["boxes"].shape[1] == 4
        assert 0 <= float(target["boxes"].min()) and float(target["boxes"].max()) <= 1
