"""Every error the package raises on purpose, in one small module.

Each message is one line that names the fix; the CLI prints it and exits with code 2. Math
modules, the engine, the data layer, the UI and the CLI all import their errors from here.
"""

from __future__ import annotations


class DSBError(Exception):
    """Base of the package's own errors (a one-line message naming the fix)."""


class ConfigError(DSBError, ValueError):
    """A run configuration (flags, options, sweep file, form input) that cannot work."""


class DataNotFoundError(DSBError, FileNotFoundError):
    """A dataset is neither available locally nor downloadable; the message names both fixes."""


class MalformedDataError(DSBError, ValueError):
    """A data file exists but cannot be parsed; the message names the file and the problem."""


class UnsafeInputError(DSBError, ValueError):
    """Input refused for safety: a path outside the data roots, an over-size or crafted file."""


class TrainingDivergedError(DSBError, RuntimeError):
    """The training loss became NaN/inf; finished checkpoints are kept, the message names the lr."""


class ResultExistsError(DSBError, FileExistsError):
    """A finished result would be overwritten; the message names --resume / --force."""


class BusyError(ConfigError):
    """A run refused because the CPU cores already serve as many runs as they can."""


class OutputWriteError(DSBError, OSError):
    """A result could not be written (disk full, permissions); what was written before is kept."""
