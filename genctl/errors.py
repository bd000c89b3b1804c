"""User-facing errors. The CLI prints these as one line (no traceback unless --debug) and exits non-zero."""

from __future__ import annotations


class GenctlError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class DataError(GenctlError):
    """Bad or corrupted data: a store, an input file, a checkpoint. The message names the file and field."""


class ConfigError(GenctlError):
    """A configuration that does not validate (unknown or ill-typed field, inconsistent sizes)."""
