"""Errors a user can cause. The CLI prints them as one line (problem + fix), never a traceback."""


class RobopolicyError(Exception):
    """Base class: the message names the problem and how to fix it."""


class StoreError(RobopolicyError):
    """A demo store is missing, not a store, damaged, or asked for something it does not hold."""


class SchemaError(StoreError):
    """An episode does not match the store's schema (keys, per-frame shapes, dtypes, lengths)."""


class ImportFormatError(RobopolicyError):
    """A file handed to an importer is not in the format that importer reads."""


class ConfigError(RobopolicyError):
    """A configuration value is invalid."""
