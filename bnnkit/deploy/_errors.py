"""Errors of the deployment path."""


class DeployFormatError(ValueError):
    """A .bnn file (or a tensor given to the runtime) is corrupt, truncated, of another version,
    or inconsistent with itself. The message is one line naming the problem and the fix."""


class DeployExportError(ValueError):
    """A model cannot be exported (an operation or module the deployment runtime does not know)."""
