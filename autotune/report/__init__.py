"""Reading a study: the report, its explanations, figures, optuna-dashboard, and the terminal consoles of
the commands."""

from autotune.report._dashboard import serve
from autotune.report._report import Report, build_report
from autotune.study._notes import explain_study

__all__ = ["Report", "build_report", "explain_study", "serve"]
