"""One exception family for the product.

The CLIs map every :class:`PatchbankError` to exit code 2 with a one-line message; the service maps them to
4xx answers with the same reason. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


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
