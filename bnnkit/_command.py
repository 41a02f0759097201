"""How every `bnnkit` command reports bad input, in one place.

One stderr line `error: <problem>; <fix>`, no traceback, and exit status 2 for usage errors
(argparse's own, ConfigError, UnknownNameError) or 1 for runtime errors (data, checkpoints, .bnn
files, the disk), as each bnnkit.errors class's `exit_code` says. Every command builds its flags
with ArgumentParser below and runs under `run`.
"""
from __future__ import annotations

import argparse
import errno
import math
import sys
from typing import Any, Callable

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


def flag_type(convert: Callable[[str], Any], kind: type) -> Callable[[str], Any]:
    """An argparse `type` that converts a flag's text with convert; its ValueError's message is
    the error line (argparse's own would say only "invalid value"). `bnnkit_kind` says what the
    flag holds (int, float, bool, list, ...)."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.bnnkit_kind = kind  # type: ignore[attr-defined]
    parse.__name__ = kind.__name__
    return parse


def typed_value(kind: type, text: str) -> Any:
    """text as an int, a finite float, a boolean (true/false, yes/no, on/off, 1/0) or a string;
    ValueError naming what was expected."""
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    return kind(text)


def number(kind: type, minimum: float) -> Callable[[str], Any]:
    """An argparse `type`: an int or finite float of at least minimum."""
    def convert(text: str) -> Any:
        value = typed_value(kind, text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, not {text}")
        return value
    return flag_type(convert, kind)


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
