"""Where studies live: storage URLs (SQLite by default, PostgreSQL for many workers) and the records
read from and written to them."""

from autotune.store._storage import DEFAULT_STORAGE, load_study, open_storage, redact, storage_exists, study_lock

__all__ = ["DEFAULT_STORAGE", "load_study", "open_storage", "redact", "storage_exists", "study_lock"]
