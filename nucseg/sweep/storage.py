"""The study's storage and pruner, from the sweeper's config values.

Storage URLs:

- `null` (the default): a journal file `<sweep dir>/optuna_journal.log`;
- `journal:///abs/path/study.log` or `journal://relative/path.log`: an optuna journal file
  (`optuna.storages.journal.JournalFileBackend`). Its lock is a symlink, which works on NFS and other shared
  filesystems, so several sweeper processes or Slurm jobs on different machines can share one study;
- any SQLAlchemy URL optuna's RDBStorage takes: `sqlite:///study.db`, `postgresql://user@host/db`,
  `mysql+pymysql://...`.

Relative paths are made absolute (against the directory the sweep was started from), so the launched jobs, whose
working directory may differ, open the same study.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.utils.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_JOURNAL", "PRUNERS", "build_optuna_object", "make_pruner", "open_storage", "resolve_storage"]

DEFAULT_JOURNAL = "optuna_journal.log"
JOURNAL = "journal://"
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
EXPECTED_STORAGE = ("expected null (a journal file in the sweep directory), journal:///path/to/study.log, or an "
                    "SQLAlchemy URL (sqlite:///study.db, postgresql://user@host/db, mysql://...)")


def resolve_storage(storage: str | None, sweep_dir: str | os.PathLike, cwd: str | os.PathLike | None = None,
                    key: str = "hydra.sweeper.storage") -> str:
    """The storage URL with absolute paths; raises ConfigError naming `key` for anything else."""
    base = Path(cwd or os.getcwd())
    if storage is None or str(storage).strip() in ("", "null", "None"):
        return JOURNAL + str((base / sweep_dir / DEFAULT_JOURNAL).resolve())
    url = str(storage).strip()
    if url.startswith(JOURNAL):
        path = url[len(JOURNAL):]
        if not path or path.endswith("/"):
            raise ConfigError(f"{key}: {url!r} names no journal file; {EXPECTED_STORAGE}")
        return JOURNAL + str((base / path).resolve())
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    if scheme not in RDB_SCHEMES:
        raise ConfigError(f"{key}: {url!r} is not a storage URL; {EXPECTED_STORAGE}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{key}: {url!r} is not a valid SQLAlchemy URL ({exc}); {EXPECTED_STORAGE}") from exc
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"{key}: {url!r} is an in-memory SQLite database, which the launched jobs cannot "
                              f"open; {EXPECTED_STORAGE}")
        url = parsed.set(database=str((base / parsed.database).resolve())).render_as_string(hide_password=False)
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An optuna storage for a URL from `resolve_storage`."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    # a timeout so that workers starting together on one SQLite file wait for the lock instead of failing
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


# name -> (class, default arguments); anything else: a {_target_: ...} config
PRUNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "median": ("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 0}),
    "percentile": ("PercentilePruner", {"percentile": 25.0}),
    "successive_halving": ("SuccessiveHalvingPruner", {}),
    "hyperband": ("HyperbandPruner", {}),
    "none": ("NopPruner", {}),
}


def build_optuna_object(conf: Any, key: str, base: type, what: str) -> Any:
    """Instantiate a `{_target_: ...}` config that must give an instance of `base` (optuna's sampler or pruner
    base class, `what` in words); ConfigError naming `key` when it cannot be built or is something else."""
    import hydra

    target = str(dict(conf.items()).get("_target_", "?"))
    try:
        obj = hydra.utils.instantiate(conf)
    except Exception as exc:
        raise ConfigError(f"{key}: cannot build {target}: {exc}") from exc
    if not isinstance(obj, base):
        raise ConfigError(f"{key}: {target} is not an optuna {what} ({base.__name__})")
    return obj


def make_pruner(spec: Any, key: str = "hydra.sweeper.pruner") -> optuna.pruners.BasePruner:
    """A pruner from a name in PRUNERS, a `{_target_: optuna.pruners.X, ...}` config, or a pruner object."""
    import optuna

    if spec is None:
        return optuna.pruners.NopPruner()
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    if isinstance(spec, str):
        if spec.lower() not in PRUNERS:
            raise ConfigError(f"{key}: {spec!r} is not a pruner; expected one of {', '.join(PRUNERS)}, or a "
                              "{_target_: optuna.pruners.<Name>, ...} config")
        name, kwargs = PRUNERS[spec.lower()]
        return getattr(optuna.pruners, name)(**kwargs)
    if isinstance(spec, Mapping) or hasattr(spec, "items"):
        conf = dict(spec.items())
        target = str(conf.get("_target_", ""))
        if not target:
            raise ConfigError(f"{key}: a pruner config needs `_target_` (e.g. optuna.pruners.MedianPruner)")
        return build_optuna_object(conf, key, optuna.pruners.BasePruner, "pruner")
    raise ConfigError(f"{key}: expected a pruner name ({', '.join(PRUNERS)}) or a {{_target_: ...}} config, "
                      f"got {type(spec).__name__}")
