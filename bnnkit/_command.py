"""How every `bnnkit` command reports bad input, in one place.

One stderr line `error: <problem>; <fix>`, no traceback, and exit status 2 for usage errors
(argparse's own, ConfigError, UnknownNameError) or 1 for runtime errors (data, checkpoints, .bnn
files, the disk), as each bnnkit.errors class's `exit_code` says. Every command builds its flags
with ArgumentParser below and runs under `run`.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from .errors import BnnkitError

# what to do about an OSError, by errno
OS_FIXES = {errno.ENOSPC: "free space or write elsewhere", errno.EDQUOT: "free space or write elsewhere",
            errno.ENOENT: "check the path", errno.ENOTDIR: "check the path", errno.EISDIR: "pass a file, not a folder",
            errno.EACCES: "check its permissions or write elsewhere", errno.EPERM: "check its permissions or write elsewhere",
            errno.EROFS: "write elsewhere (the file system is read-only)"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one `error:` line and exit status 2 (argparse's
    own prints the usage and `PROG: error: ...`)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """(the `error:` line, exit status) for an expected error, None for anything else (a bug)."""
    if isinstance(exc, BnnkitError):
        text = str(exc).strip()
        return f"error: {text.splitlines()[0] if text else type(exc).__name__}", exc.exit_code
    if isinstance(exc, OSError):
        fix = OS_FIXES.get(exc.errno, "check the path and the disk")
        what = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
        what = what[0].lower() + what[1:] if what[:2] != what[:2].upper() else what
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"error: {where}{what}; {fix}", 1
    return None


def run(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """command(argv), with expected errors printed as one line and mapped to an exit status."""
    try:
        return command(argv)
    except SystemExit as exc:  # ArgumentParser.error: 2 (its line is printed), --help: 0
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (BnnkitError, OSError) as exc:
        line, code = error_line(exc)
        print(line, file=sys.stderr)
        return code
