"""Study storage: the SQLite default, any SQLAlchemy URL, and one-line errors when it cannot open."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autotune.exceptions import StorageError, StudyError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"


def open_storage(url: str | None = None) -> optuna.storages.RDBStorage:
    """Open (and create, for SQLite) the storage at ``url``; unreachable servers are one clear error."""
    import optuna
    import sqlalchemy.exc

    url = url or DEFAULT_STORAGE
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage {url!r}: not a database URL (example: {DEFAULT_STORAGE})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:  # Optuna wraps the missing driver module in an ImportError
        missing = getattr(exc.__cause__, "name", None) or str(exc)
        raise StorageError(
            f"storage {redact(url)}: its database driver is not installed ({missing}); "
            "for PostgreSQL: pip install 'autotune[postgres]'"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage {redact(url)}: cannot connect: {_first_line(exc)}") from None


def load_study(name: str | None, url: str | None = None) -> optuna.Study:
    """An existing study; without a name, the storage's only study."""
    import optuna

    storage = open_storage(url)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    where = redact(url or DEFAULT_STORAGE)
    listing = ", ".join(sorted(names)) or "none"
    if name is None:
        if not names:
            raise StudyError(f"storage {where} has no studies; run 'autotune search' first")
        if len(names) > 1:
            raise StudyError(f"storage {where} has {len(names)} studies; pick one with --study ({listing})")
        name = names[0]
    if name not in names:
        raise StudyError(f"no study named {name!r} in {where} (studies: {listing})")
    return optuna.load_study(study_name=name, storage=storage)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and export files."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown as given
        return url


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split("\n")[0].split())
    return text or type(original).__name__
