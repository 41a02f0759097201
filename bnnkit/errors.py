"""Every error bnnkit reports to a user, in one place at the bottom of the package.

Each class is a usage error (bad or contradictory flags, unknown names: exit status 2) or a
runtime error (data, checkpoints, a diverged run, a bad .bnn file: exit status 1); `exit_code`
says which, so that the command line maps errors to exit codes without knowing where they come
from. Messages are one line naming the problem and the fix.
"""
from __future__ import annotations

from typing import ClassVar


class BnnkitError(Exception):
    """Base of the errors the `bnnkit` command prints as one `error:` line."""

    exit_code: ClassVar[int] = 1


class UnknownNameError(BnnkitError, KeyError):
    """An unknown model, method, quantizer or recipe name. The message lists the valid ones."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class ConfigError(BnnkitError, ValueError):
    """Contradictory or invalid settings (a usage error: exit status 2)."""

    exit_code = 2


class CheckpointError(BnnkitError, ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why and what to do."""


class DataError(BnnkitError):
    """Bad data or a bad data argument. The message names the problem and the fix on one line."""


class NonFiniteLossError(BnnkitError, RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class DeployFormatError(BnnkitError, ValueError):
    """A .bnn file (or a tensor given to the runtime or the native kernels) is corrupt, truncated,
    of another version, or inconsistent with itself."""


class DeployExportError(BnnkitError, ValueError):
    """A model cannot be exported (an operation or module the deployment runtime does not know)."""
