"""The small set of errors a *user* can cause.

Everything the CLI reports as a one-line message derives from :class:`ReenactError`; the CLI
catches it once, prints ``reenact: error: <message>`` and exits with ``exit_code`` (2: usage or
input). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReenactError(Exception):
    """Base class: a problem with what the user gave us, phrased so they can fix it."""

    exit_code = 2


class InputError(ReenactError):
    """A video, image or path the user named is missing, unreadable or unusable."""


class ModelNotFoundError(ReenactError):
    """Model weights could not be found (offline, wrong path, not downloaded)."""


class EmbeddingError(ReenactError):
    """A motion-embedding file is corrupt, or does not fit the model it is used with."""


class ConfigError(ReenactError):
    """A setting is out of range (non-positive steps, lr, ...)."""


class WriteError(InputError, OSError):
    """A result could not be written (full disk, no permission); nothing partial was left.

    Also an ``OSError``, so code that handles I/O failures generically still sees one.
    """


class DivergedError(ReenactError):
    """An inversion's loss or embedding became non-finite (NaN/inf); the last good checkpoint
    is kept."""
