"""Files written whole or not at all: a reader (or a rerun after a crash) sees the old file or the new one,
never a part of it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from patchbank.errors import DataError

TMP_SUFFIX = ".patchbank-tmp"  # a killed write's leftover, .<name>.<random>.patchbank-tmp beside the file


def write_atomic(path: Path, data: bytes | str | Callable[[Path], None]) -> None:
    """Write ``data`` (bytes, UTF-8 text, or a function that writes the file it is given) to a temporary
    file beside ``path``, flush it to disk, then rename it to ``path``. DataError naming ``path`` when the
    filesystem refuses; the temporary file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        else:
            with tmp.open("wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
