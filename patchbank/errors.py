"""One exception family for the product.

The CLIs map every :class:`PatchbankError` to exit code 2 with a one-line message; the service maps them to
4xx answers with the same reason. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class PatchbankError(Exception):
    """Base of every error a user can cause and fix (bad data, bad bank, bad input, missing weights)."""


class DataError(PatchbankError):
    """A dataset on disk is missing, incomplete or unreadable; the message names the path."""


class InputError(PatchbankError):
    """A sample or an argument is malformed (wrong shape, no valid points, unknown name)."""


class BankError(PatchbankError):
    """A bank directory is missing, corrupt, or was built by another feature spec."""


class WeightsError(PatchbankError):
    """Backbone weights cannot be found, read, or do not match what the bank recorded."""


class ConfigError(PatchbankError):
    """A required setting (data root, banks directory) is not configured."""


class NotFoundError(PatchbankError):
    """A named thing (a category among the loaded banks) does not exist."""


class PayloadTooLargeError(InputError):
    """An upload is over the configured size limit."""


ECHO_MAX = 64  # characters of a client's value (a category, an id) an error message repeats
_OBJECT = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # a Python object's repr, e.g. an in-memory upload
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[\w.~-]+/)*([\w.~-]+)")


def shorten(value: str, limit: int = ECHO_MAX) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said: a 100 kB category must not
    come back in the 404 nor fill the logs."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def redact(text: str, root: str | None = None) -> str:
    """A message fit for a client: no memory addresses (``<_io.BytesIO object at 0x...>``) and no absolute
    server paths (paths under ``root`` become relative to it, any other keeps only its last part)."""
    text = _ADDRESS.sub("", _OBJECT.sub("the data", text))
    if root:
        text = text.replace(root.rstrip("/") + "/", "")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)
