"""Errors of the deployment path (defined with the others in bnnkit.errors)."""
from ..errors import DeployExportError, DeployFormatError

__all__ = ["DeployExportError", "DeployFormatError"]
