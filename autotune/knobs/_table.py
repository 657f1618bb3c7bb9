"""The knob table: every knob autotune searches, declared once.

Each field of :class:`Knobs` is one knob: its name, type and default, and in its metadata (a :class:`Knob`)
its domain, the device it needs for some values, whether it acts only with DataLoader workers, what it
changes (speed only, memory, numerics, the recipe), how a trial line shows it, and its name in each
framework form. TrainConfig is these fields plus the workload's own knobs; the space, the device filter,
the records, the consoles and the framework forms read the table. A knob acts in one place:
``autotune.training`` (the apply module).

Adding a knob: one field here, the line where it acts in autotune/training/_apply.py, the shipped space
files, its docs and tests.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]
OptimizerImpl = Literal["default", "foreach", "fused"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
OPTIMIZER_IMPLS: tuple[str, ...] = get_args(OptimizerImpl)

FORMS = ("hf", "lightning", "accelerate")  # the framework forms of export-best that name knobs
CODE = "code"  # a knob a form has no field for: its code lines do what the knob does


class Effect(enum.Enum):
    """What a knob's value changes besides speed."""

    MEMORY = "memory"  # the trial's peak memory
    NUMERICS = "numerics"  # the arithmetic of the step (rounding, dtype)
    RECIPE = "recipe"  # what is learned per sample (the effective batch, the learning rate)


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A knob value only some devices run: ``cuda`` (a CUDA device) or ``bf16`` (bfloat16 support)."""

    needs: Literal["cuda", "bf16"]
    reason: str


@dataclasses.dataclass(frozen=True)
class Knob:
    """How autotune treats one knob. ``name``, ``type`` and ``default`` come from its field in Knobs."""

    help: str
    low: float | None = None  # ints and floats: the smallest value (floats: exclusive)
    choices: tuple[Any, ...] | None = None  # a closed set of values (str and bool knobs)
    nullable: bool = False  # None is allowed (prefetch_factor: PyTorch's default)
    needs_workers: bool = False  # acts only with num_workers > 0: searched only there
    effects: frozenset[Effect] = frozenset()  # besides speed
    requires: Mapping[Any, Requirement] = dataclasses.field(default_factory=dict)
    # The trial line's words for a value ("bf16", "pinned"); None shows nothing.
    show: Callable[[Any], str | None] = lambda value: None
    # Its name in each framework form (hf, lightning, accelerate): a plain field name takes the knob's value
    # as it is (the form reads it from here); "code", "DataLoader.x" or a description: the form's own lines.
    forms: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Keyword arguments it adds to the optimizer's constructor (the apply module rebuilds the optimizer).
    optimizer_kwargs: Callable[[Any], dict[str, Any]] | None = None
    name: str = ""
    type: str = ""
    default: Any = None

    @property
    def is_int(self) -> bool:
        return self.type.startswith("int")

    @property
    def is_float(self) -> bool:
        return self.type.startswith("float")

    @property
    def is_bool(self) -> bool:
        return self.type == "bool"

    @property
    def memory_neutral(self) -> bool:
        return Effect.MEMORY not in self.effects


def knob(default: Any, help: str, **info: Any) -> Any:
    """One knob's field: its default and its :class:`Knob` entry."""
    return dataclasses.field(default=default, metadata={"knob": Knob(help=help, **info)})


def _flag(words: str) -> Callable[[Any], str | None]:
    return lambda value: words if value else None


@dataclasses.dataclass(frozen=True)
class Knobs:
    """The knobs' fields, in the order configs are shown and written. Field names are public: export and
    space files use them."""

    batch_size: int = knob(
        32,
        "micro-batch per optimizer micro-step",
        low=1,
        effects=frozenset({Effect.MEMORY, Effect.RECIPE}),
        forms={
            "hf": "per_device_train_batch_size",
            "lightning": "DataLoader.batch_size",
            "accelerate": "DataLoader.batch_size",
        },
    )
    accumulation_steps: int = knob(
        1,
        "micro-batches per optimizer step: effective batch = batch_size x accumulation_steps",
        low=1,
        effects=frozenset({Effect.RECIPE}),
        forms={
            "hf": "gradient_accumulation_steps",
            "lightning": "accumulate_grad_batches",
            "accelerate": "gradient_accumulation_steps",
        },
    )
    num_workers: int = knob(
        0,
        "DataLoader workers",
        low=0,
        effects=frozenset({Effect.MEMORY}),
        show=lambda value: f"workers {value}",
        forms={
            "hf": "dataloader_num_workers",
            "lightning": "DataLoader.num_workers",
            "accelerate": "DataLoader.num_workers",
        },
    )
    prefetch_factor: int | None = knob(
        None,
        "batches each worker loads ahead (PyTorch's default with null)",
        low=1,
        nullable=True,
        needs_workers=True,
        effects=frozenset({Effect.MEMORY}),
        show=lambda value: f"prefetch {value}" if value else None,
        forms={
            "hf": "dataloader_prefetch_factor",
            "lightning": "DataLoader.prefetch_factor",
            "accelerate": "DataLoader.prefetch_factor",
        },
    )
    pin_memory: bool = knob(
        False,
        "page-locked host memory for the batches (speeds up copies to a CUDA device)",
        choices=(False, True),
        effects=frozenset({Effect.MEMORY}),
        requires={True: Requirement("cuda", "pinned memory only speeds up copies to a CUDA device")},
        show=_flag("pinned"),
        forms={
            "hf": "dataloader_pin_memory",
            "lightning": "DataLoader.pin_memory",
            "accelerate": "DataLoader.pin_memory",
        },
    )
    persistent_workers: bool = knob(
        False,
        "DataLoader workers kept between epochs",
        choices=(False, True),
        needs_workers=True,
        effects=frozenset({Effect.MEMORY}),
        show=_flag("persistent"),
        forms={
            "hf": "dataloader_persistent_workers",
            "lightning": "DataLoader.persistent_workers",
            "accelerate": "DataLoader.persistent_workers",
        },
    )
    precision: Precision = knob(
        "fp32",
        "autocast dtype; tf32 is fp32 with TF32 matmuls (CUDA only); fp16 uses a GradScaler",
        choices=PRECISIONS,
        effects=frozenset({Effect.MEMORY, Effect.NUMERICS}),
        requires={
            "tf32": Requirement("cuda", "TF32 matmuls need a CUDA device"),
            "fp16": Requirement("cuda", "fp16 training uses a CUDA GradScaler"),
            "bf16": Requirement("bf16", "the device has no bfloat16 support"),
        },
        show=lambda value: str(value),
        forms={
            "hf": "bf16 / fp16 / tf32",
            "lightning": "precision: 32-true, bf16-mixed, 16-mixed",
            "accelerate": "mixed_precision: no, bf16, fp16",
        },
    )
    channels_last: bool = knob(
        False,
        "model and 4-D inputs in channels_last memory format",
        choices=(False, True),
        effects=frozenset({Effect.MEMORY}),
        show=_flag("channels_last"),
        forms={"hf": "code", "lightning": "code", "accelerate": "code"},
    )
    compile: CompileMode = knob(
        "off",
        "torch.compile mode",
        choices=COMPILE_MODES,
        effects=frozenset({Effect.MEMORY, Effect.NUMERICS}),
        requires={"reduce-overhead": Requirement("cuda", "reduce-overhead relies on CUDA graphs")},
        show=lambda value: f"compile {value}" if value != "off" else None,
        forms={"hf": "torch_compile + torch_compile_mode", "lightning": "code", "accelerate": "TorchDynamoPlugin.mode"},
    )
    gradient_checkpointing: bool = knob(
        False,
        "recompute activations in the backward pass: less memory, more compute",
        choices=(False, True),
        effects=frozenset({Effect.MEMORY}),
        show=_flag("checkpointing"),
        forms={"hf": "activation_checkpointing", "lightning": "code", "accelerate": "code"},
    )
    optimizer_impl: OptimizerImpl = knob(
        "default",
        "the optimizer's implementation in PyTorch: default (PyTorch's pick for the device), foreach (one kernel "
        "per operation over all parameters) or fused (one kernel per step); tried where the workload's optimizer "
        "takes it",
        choices=OPTIMIZER_IMPLS,
        effects=frozenset({Effect.MEMORY}),
        show=lambda value: f"optimizer {value}" if value != "default" else None,
        forms={"hf": "code", "lightning": "code", "accelerate": "code"},
        optimizer_kwargs=lambda value: {} if value == "default" else {value: True},
    )
    max_lr: float = knob(
        1e-3,
        "peak learning rate of the OneCycle schedule",
        low=0.0,
        effects=frozenset({Effect.RECIPE}),
        show=lambda value: f"max_lr {value:g}",
        forms={"hf": "learning_rate", "lightning": "code", "accelerate": "code"},
    )


KNOBS: dict[str, Knob] = {
    field.name: dataclasses.replace(
        field.metadata["knob"], name=field.name, type=str(field.type), default=field.default
    )
    for field in dataclasses.fields(Knobs)
}
KNOB_NAMES: tuple[str, ...] = tuple(KNOBS)
INT_KNOBS: tuple[str, ...] = tuple(name for name, entry in KNOBS.items() if entry.is_int)
FLOAT_KNOBS: tuple[str, ...] = tuple(name for name, entry in KNOBS.items() if entry.is_float)
WORKER_KNOBS: tuple[str, ...] = tuple(name for name, entry in KNOBS.items() if entry.needs_workers)
# Knobs that do not change a trial's peak memory, and batch_size, which memory is compared along.
MEMORY_NEUTRAL_KNOBS: tuple[str, ...] = ("batch_size", *(n for n, e in KNOBS.items() if e.memory_neutral))


def describe(values: Mapping[str, Any]) -> list[str]:
    """The trial line's words for a config's knobs, in the table's order (batch and workers aside)."""
    return [words for name, entry in KNOBS.items() if name in values and (words := entry.show(values[name]))]


def form_fields(form: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of framework form ``form`` that take a knob's value as it is (a plain field name in the
    table), from ``values`` (the config's, or the DataLoader's where it decides); None values left out."""
    return {
        entry.forms[form]: values[name]
        for name, entry in KNOBS.items()
        if entry.forms.get(form, CODE).isidentifier() and entry.forms[form] != CODE and values.get(name) is not None
    }


def optimizer_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments the knobs add to the optimizer's constructor."""
    kwargs: dict[str, Any] = {}
    for name, entry in KNOBS.items():
        if entry.optimizer_kwargs is not None and name in values:
            kwargs.update(entry.optimizer_kwargs(values[name]))
    return kwargs


def unsupported_on(device_type: str, bf16: bool, name: str = "") -> dict[str, dict[Any, str]]:
    """Knob values a device cannot run (``device_type`` cpu or cuda), each with its reason."""
    dropped: dict[str, dict[Any, str]] = {}
    for knob_name, entry in KNOBS.items():
        for value, requirement in entry.requires.items():
            missing = (requirement.needs == "cuda" and device_type != "cuda") or (
                requirement.needs == "bf16" and not bf16
            )
            if missing:
                reason = requirement.reason.replace("the device", name) if name else requirement.reason
                dropped.setdefault(knob_name, {})[value] = reason
    return dropped
