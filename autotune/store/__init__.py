"""Where studies live: storage URLs (SQLite by default, PostgreSQL for many workers) and the records
read from and written to them."""

from autotune.store._records import (
    ExportDocument,
    StudySetup,
    TrialRecord,
    TrialStatus,
    read_setup,
    write_setup,
    write_trial,
)
from autotune.store._storage import DEFAULT_STORAGE, load_study, open_storage, redact, storage_exists, study_lock

__all__ = [
    "DEFAULT_STORAGE",
    "ExportDocument",
    "StudySetup",
    "TrialRecord",
    "TrialStatus",
    "load_study",
    "open_storage",
    "read_setup",
    "redact",
    "storage_exists",
    "study_lock",
    "write_setup",
    "write_trial",
]
