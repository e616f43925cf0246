"""Turn the errors a user can fix (missing data, bad files, bad config values) into one clear message.

Hydra wraps exceptions raised while instantiating configs; the user needs our message, not two tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("nucseg")

__all__ = ["CheckpointError", "ConfigError", "DataNotFoundError", "ImageReadError", "friendly_errors", "user_error"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not a nucseg checkpoint, or its weights do not fit its
    network; the message names the file."""


class ConfigError(ValueError):
    """A config value a user can fix; the message names the key, the value and what was expected."""


class DataNotFoundError(FileNotFoundError):
    """The data root is missing or holds no usable samples; the message says where we looked and what to do."""


class ImageReadError(ValueError):
    """An input file could not be decoded as an image; the message names the file."""


def user_error(exc: BaseException) -> BaseException | None:
    """The first exception in the cause/context chain that is a user-fixable nucseg error, if any."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DataNotFoundError | ImageReadError | CheckpointError | ConfigError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Exit with status 2 and one message for user-fixable errors; re-raise anything else.

    Set NUCSEG_FULL_ERROR=1 (or Hydra's HYDRA_FULL_ERROR=1) to see the whole traceback.
    """
    try:
        yield
    except Exception as exc:
        err = user_error(exc)
        if err is None or os.environ.get("NUCSEG_FULL_ERROR") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if logging.getLogger().handlers:
            log.error("%s", err)
        else:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
