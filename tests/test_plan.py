"""autotune.study._plan: the search planned before any trial: the space fitted to the device, the workload
and the machine, the recipe's effective batch, the budgets, the trial timeout, the batch capped by the
dataset, and the plan again for an optimizer that steps with a closure."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import workload_spec

from autotune.exceptions import SearchSpaceError
from autotune.knobs._space import load_space
from autotune.store._storage import DEFAULT_STORAGE
from autotune.study._budget import DEFAULT_TRIAL_TIMEOUT_SECONDS
from autotune.study._options import SearchOptions
from autotune.study._plan import cap_batch, plan_search, recipe_effective_batch, with_closure
from autotune.workload import load_workload

# --- the space fitted to the device and the workload ---------------------------------------------------------


def test_plan_search_on_cpu_drops_cuda_only_values_with_notes(space_file):
    space = space_file(
        "knobs:\n"
        "  precision: {choices: [fp32, tf32, bf16, fp16], default: tf32}\n"
        "  pin_memory: [false, true]\n"
        "  compile: [off, default, reduce-overhead]\n"
        "  gradient_checkpointing: [false, true]\n"
    )
    plan = plan_search(SearchOptions(workload=workload_spec(), space=space, device="cpu"))
    assert plan.device.torch_device == "cpu"
    for note in (
        "precision=tf32 dropped from the search: TF32 matmuls need a CUDA device",
        "precision=fp16 dropped from the search: fp16 training uses a CUDA GradScaler",
        "pin_memory=true dropped from the search: pinned memory only speeds up copies to a CUDA device",
        "compile=reduce-overhead dropped from the search: reduce-overhead relies on CUDA graphs",
        "gradient_checkpointing=true dropped from the search: the workload has no gradient_checkpointing hook "
        "and its model no gradient_checkpointing_enable()",
        "baseline precision=tf32 runs as fp32: TF32 matmuls need a CUDA device",
    ):
        assert note in plan.notes
    assert plan.space.knobs["precision"].choices == ("fp32", "bf16")
    assert plan.space.knobs["pin_memory"].choices == (False,)
    assert plan.space.knobs["compile"].choices == ("off", "default")
    assert plan.baseline.precision == "fp32"
    assert "pin_memory" not in plan.space.searched


def test_plan_search_drops_channels_last_for_a_model_without_2d_convolutions():
    plan = plan_search(SearchOptions(workload=workload_spec()))  # tiny: a linear model
    assert (
        "channels_last=true dropped from the search: the model has no 2-D convolutions for channels_last to "
        "speed up" in plan.notes
    )
    assert plan.space.knobs["channels_last"].choices == (False,)
    demo = plan_search(SearchOptions())  # a CNN keeps it
    assert not any(note.startswith("channels_last") for note in demo.notes)


def test_plan_search_drops_more_workers_than_cores(monkeypatch, space_file):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    plan = plan_search(
        SearchOptions(workload=workload_spec(), space=space_file("knobs:\n  num_workers: [0, 2, 3, 8]\n"))
    )
    assert plan.space.knobs["num_workers"].choices == (0, 2)
    assert "num_workers=3 dropped from the search: more DataLoader workers than this machine's 2 cores" in plan.notes
    assert "num_workers=8 dropped from the search: more DataLoader workers than this machine's 2 cores" in plan.notes


def test_plan_search_on_cpu_drops_fp16_for_an_optimizer_stepped_with_a_closure(space_file):
    options = SearchOptions(workload=workload_spec(), space=space_file("knobs: {precision: [fp32, bf16, fp16]}\n"))
    plan = with_closure(options, "the optimizer's step failed without a closure and ran with one")
    assert plan.step_closure is True
    assert plan.space.knobs["precision"].choices == ("fp32", "bf16")
    dropped = (
        "precision=fp16 dropped from the search: the optimizer steps with a closure, which GradScaler cannot scale"
    )
    assert dropped in plan.notes
    assert plan.notes[-1] == "the optimizer's step failed without a closure and ran with one"
    assert plan_search(options).step_closure is None  # as the workload says, until a check finds otherwise


# --- the recipe's effective batch ----------------------------------------------------------------------------


def test_recipe_effective_batch_is_the_workloads_else_the_baselines_batch_times_its_accumulation():
    space = load_space(None)
    assert recipe_effective_batch(load_workload(workload_spec()), space) == 8
    assert recipe_effective_batch(load_workload(workload_spec("accumulating")), space) == 8 * 32
    declared = dataclasses.replace(load_workload(workload_spec()), effective_batch=64)
    assert recipe_effective_batch(declared, space) == 64


def test_plan_search_keeps_the_recipes_effective_batch_by_default():
    plan = plan_search(SearchOptions(workload=workload_spec()))
    assert plan.space.effective_batch == 8 and plan.budgets.baseline_effective_batch == 8
    assert plan.notes[0] == "the recipe's effective batch 8 is kept in every trial (--effective-batch free releases it)"


def test_plan_search_effective_batch_free_releases_it_and_says_how_a_change_is_ranked(space_file):
    plan = plan_search(SearchOptions(workload=workload_spec(), effective_batch="free"))
    assert plan.space.effective_batch is None and plan.budgets.baseline_effective_batch == 8
    assert plan.notes[0].startswith(
        "--effective-batch free: trials may change the recipe's 8 samples per optimizer step"
    )
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    from_file = plan_search(SearchOptions(workload=workload_spec(), space=space))
    assert from_file.space.effective_batch is None
    assert from_file.notes[0].startswith(f"{space}: effective_batch free: trials may change the recipe's 8 samples")


def test_plan_search_another_effective_batch_is_held_with_accumulation_and_noted(space_file):
    plan = plan_search(
        SearchOptions(
            workload=workload_spec(), effective_batch=32, space=space_file("knobs: {batch_size: [8, 16, 32]}\n")
        )
    )
    assert plan.space.effective_batch == 32
    assert (plan.baseline.batch_size, plan.baseline.accumulation_steps) == (8, 4)
    assert plan.notes[0] == (
        "--effective-batch: effective batch 32, not the recipe's 8: every trial is projected to the recipe's "
        "progress (gradient noise scale), and max_lr follows the batch"
    )
    assert plan.budgets.baseline_effective_batch == 8  # the recipe's: what the projections reach


def test_plan_search_a_batch_the_space_does_not_search_stays_the_recipes(space_file):
    plan = plan_search(
        SearchOptions(workload=workload_spec("accumulating"), space=space_file("knobs: {precision: [fp32, bf16]}\n"))
    )
    assert (plan.baseline.batch_size, plan.baseline.accumulation_steps) == (8, 32)
    assert plan.space.knobs["batch_size"].choices == (8,)


def test_plan_search_a_space_that_cannot_hold_the_recipes_effective_batch_says_how_to_release_it(space_file):
    space = space_file("knobs: {batch_size: [3, 5]}\n")
    with pytest.raises(SearchSpaceError) as held:
        plan_search(SearchOptions(workload=workload_spec(), space=space))
    assert str(held.value) == (
        f"{space}: no batch_size in [3, 5] divides the effective batch 8, the recipe's, which every trial keeps "
        "(--effective-batch free releases it)"
    )
    with pytest.raises(SearchSpaceError) as asked:  # the user's own effective batch: no hint
        plan_search(SearchOptions(workload=workload_spec(), space=space, effective_batch=7))
    assert str(asked.value) == f"{space}: no batch_size in [3, 5] divides the effective batch 7"


# --- names, budgets, timeout, grid ---------------------------------------------------------------------------


def test_plan_search_names_the_study_after_the_workload_and_stores_it_by_default():
    plan = plan_search(SearchOptions(workload=workload_spec("diverging")))
    assert (plan.study_name, plan.storage) == ("tiny.diverging", DEFAULT_STORAGE)
    named = plan_search(SearchOptions(workload=workload_spec(), study_name="mine", storage="sqlite:///x.db"))
    assert (named.study_name, named.storage) == ("mine", "sqlite:///x.db")


def test_plan_search_budgets_take_the_workloads_epochs_unless_given_and_count_its_evaluations():
    plan = plan_search(SearchOptions(workload=workload_spec()))
    assert (plan.budgets.epochs, plan.budgets.evaluations) == (2.0, 0.0)  # tiny: 2 epochs, no evaluate
    assert plan.budgets.memory_budget_bytes == plan.device.total_memory_bytes
    evaluated = plan_search(SearchOptions(workload=workload_spec("evaluated"), epochs=3, max_memory_bytes=2**30))
    assert (evaluated.budgets.epochs, evaluated.budgets.evaluations) == (3.0, 3.0)  # once per epoch
    assert evaluated.budgets.memory_budget_bytes == 2**30


def test_plan_search_trial_timeout_is_given_or_a_share_of_the_search_budget():
    assert plan_search(SearchOptions(workload=workload_spec())).trial_timeout_seconds == DEFAULT_TRIAL_TIMEOUT_SECONDS
    shared = plan_search(SearchOptions(workload=workload_spec(), timeout_seconds=100, n_trials=10))
    assert shared.trial_timeout_seconds == 30.0  # 3 x its 10 s share, and no less than 30 s
    given = plan_search(SearchOptions(workload=workload_spec(), timeout_seconds=100, trial_timeout_seconds=12))
    assert given.trial_timeout_seconds == 12


def test_plan_search_grid_counts_its_configs_and_refuses_a_range(space_file):
    space = space_file("knobs: {precision: [fp32, bf16], num_workers: [0, 1]}\n")
    plan = plan_search(SearchOptions(workload=workload_spec(), space=space, sampler="grid"))
    assert "exhaustive grid: 4 configs" in plan.notes
    ranged = space_file("knobs: {max_lr: {low: 0.001, high: 0.1, log: true}}\n", name="ranged.yaml")
    with pytest.raises(SearchSpaceError) as info:
        plan_search(SearchOptions(workload=workload_spec(), space=ranged, sampler="grid"))
    assert str(info.value) == (
        f"{ranged}: an exhaustive grid needs a list of choices for every searched knob; max_lr is a range"
    )


# --- the batch capped by the dataset -------------------------------------------------------------------------


def test_cap_batch_drops_batches_one_epoch_of_the_dataset_cannot_fill(space_file):
    space = space_file("knobs: {batch_size: [8, 256, 1024]}\n")
    plan = plan_search(SearchOptions(workload=workload_spec(), effective_batch="free", space=space))
    capped = cap_batch(plan, 512)
    assert capped.space.knobs["batch_size"].choices == (8, 256)
    assert capped.notes == [*plan.notes, "batch_size up to 512: the dataset has 512 samples"]
    assert cap_batch(plan, 4096) is plan  # every batch fits: nothing changes
    assert cap_batch(plan, None) is plan  # the dataset's size is not known


def test_cap_batch_leaves_a_space_that_searches_the_dataset_itself(space_file):
    space = space_file("knobs: {batch_size: [8, 1024], dataset.size: [256, 4096]}\n")
    plan = plan_search(SearchOptions(workload=workload_spec(file="knobs.py"), effective_batch="free", space=space))
    assert cap_batch(plan, 512) is plan  # each trial's dataset may differ in size


@pytest.mark.real_precision_probe
def test_plan_drops_a_precision_the_probe_finds_slow_but_never_the_baselines(monkeypatch, space_file):
    from autotune.training import _apply

    rates = {"fp32": 40e9, "bf16": 1e9}
    monkeypatch.setattr(_apply, "_matmul_rate", lambda device, precision: rates[precision])
    plan = plan_search(SearchOptions(workload="autotune.workload.demo:workload", device="cpu"))
    assert plan.space.knobs["precision"].choices == ("fp32",)
    assert any(
        note.startswith("precision=bf16 dropped from the search: bf16 matmuls run at 1 GFLOP/s") for note in plan.notes
    )
    recipe = space_file("knobs:\n  precision: {choices: [fp32, bf16], default: bf16}\n")
    plan = plan_search(SearchOptions(workload=workload_spec(), space=recipe, device="cpu"))
    assert plan.baseline.precision == "bf16" and "bf16" in plan.space.knobs["precision"].choices  # the user's run
    rates["bf16"] = 60e9  # a CPU with bf16 instructions: searched
    plan = plan_search(SearchOptions(workload="autotune.workload.demo:workload", device="cpu"))
    assert "bf16" in plan.space.knobs["precision"].choices
