"""The workload contract (what a user writes once about their training job), loading one from a file
or module, and the built-in demo."""

from autotune.workload._workload import DEMO_SPEC, Workload, load_workload, workload_name

__all__ = ["DEMO_SPEC", "Workload", "load_workload", "workload_name"]
