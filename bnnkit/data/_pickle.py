"""Reading CIFAR's pickles without running code from them.

torchvision's CIFAR release is a set of pickles, and a plain pickle.load runs whatever callable a
file names. These pickles hold only builtin containers, strings, bytes and numpy arrays, so the
unpickler admits exactly the callables that rebuild those and refuses any other by name.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

# (module, name) a genuine CIFAR pickle may name: numpy's array reconstruction, and the latin-1
# bytes trick of protocol-2 pickles written by Python 3.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int",
                                "float", "bool")),
    *(("__builtin__", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "str", "int", "float",
                                   "bool")),
}


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle names a callable outside the allowed set (it would run code when loaded)."""


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise ForbiddenPickleError(f"it would call {module}.{name}")
        return super().find_class(module, name)


def load_data_pickle(fh: BinaryIO | bytes) -> Any:
    """pickle.load for data files: builtin containers, bytes and numpy arrays only (latin-1 strings,
    as CIFAR's Python 2 pickles need)."""
    if isinstance(fh, (bytes, bytearray)):
        fh = io.BytesIO(fh)
    return _DataOnly(fh, encoding="latin1").load()
