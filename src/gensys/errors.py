"""User-facing error types.

The CLI catches `GensysError` and prints its message as one line with exit code 2, so a message must say what
went wrong and where (file, line, tensor name) without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class GensysError(Exception):
    """Base class for errors caused by the user's input (files, data, configs), not by a bug."""


class CheckpointError(GensysError):
    """A checkpoint directory is missing, truncated, corrupt or does not match the model."""


class DataError(GensysError):
    """An input data file is malformed (bad UTF-8, bad JSON/XML/CSV, broken or oversized image, ...)."""


class TokenizerError(GensysError):
    """A tokenizer file is unreadable or lacks a required special token."""
