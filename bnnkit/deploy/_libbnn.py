"""`deploy.load(path, engine="libbnn")`: the .bnn file run by libbnn (runtime/, `make runtime`)
through ctypes instead of bnnkit's PyTorch runtime. The library is $BNNKIT_LIBBNN, else
<repo>/build/runtime/libbnn.so."""
from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from ._errors import DeployFormatError

_lib: ctypes.CDLL | None = None
_c_int64_4 = ctypes.c_int64 * 4


def library_path() -> Path:
    env = os.environ.get("BNNKIT_LIBBNN")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "runtime" / "libbnn.so"


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        path = library_path()
        if not path.is_file():
            raise DeployFormatError(f"libbnn not found at {path}; build it with `make runtime` or set BNNKIT_LIBBNN")
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise DeployFormatError(f"libbnn at {path} cannot be loaded ({e}); rebuild it with `make runtime` "
                                    "or set BNNKIT_LIBBNN") from None
        p = ctypes.POINTER
        lib.bnn_load.argtypes = [ctypes.c_char_p, p(ctypes.c_void_p)]
        lib.bnn_input_shape.argtypes = [ctypes.c_void_p, _c_int64_4]
        lib.bnn_output_shape.argtypes = [ctypes.c_void_p, ctypes.c_int64, _c_int64_4, p(ctypes.c_int)]
        lib.bnn_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
        lib.bnn_set_threads.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.bnn_last_error.restype = ctypes.c_char_p
        lib.bnn_isa.argtypes = [ctypes.c_void_p]
        lib.bnn_isa.restype = ctypes.c_char_p
        lib.bnn_profile.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.bnn_layer_count.argtypes = [ctypes.c_void_p]
        lib.bnn_layer_count.restype = ctypes.c_int64
        lib.bnn_layer_info.argtypes = [ctypes.c_void_p, ctypes.c_int64, p(ctypes.c_char_p), p(ctypes.c_char_p),
                                       p(ctypes.c_double)]
        lib.bnn_free.argtypes = [ctypes.c_void_p]
        lib.bnn_free.restype = None
        _lib = lib
    return _lib


@contextlib.contextmanager
def _isa_environment(isa: str | None):
    """$BNN_ISA set to `isa` around a load (libbnn reads it when it first chooses its kernels)."""
    if isa in (None, "auto"):
        yield
        return
    previous = os.environ.get("BNN_ISA")
    os.environ["BNN_ISA"] = isa
    try:
        yield
    finally:
        if previous is None:
            del os.environ["BNN_ISA"]
        else:
            os.environ["BNN_ISA"] = previous


class LibbnnRuntime:
    """A .bnn file loaded by libbnn: `net(x)` returns the logits of a float32 batch (N, C, H, W)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, isa: str | None = None) -> None:
        lib = _library()
        self._lib, self.source = lib, str(path)
        handle = ctypes.c_void_p()
        with _isa_environment(isa):
            failed = lib.bnn_load(os.fsencode(self.source), ctypes.byref(handle)) != 0
        if failed:
            raise DeployFormatError(lib.bnn_last_error().decode("utf-8", "replace"))
        self._handle = handle
        self.isa = lib.bnn_isa(handle).decode()
        if isa not in (None, "auto") and isa != self.isa:
            raise DeployFormatError(f"libbnn already runs the {self.isa} kernels in this process (it chooses once, at "
                                    f"its first load); load with isa={isa!r} in a new process, or set BNN_ISA={isa}")
        shape = _c_int64_4()
        lib.bnn_input_shape(handle, shape)
        self.input_shape = list(shape)
        self.threads = threads
        if threads:
            lib.bnn_set_threads(handle, int(threads))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or list(x.shape[1:]) != self.input_shape[1:]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must have shape (N, {', '.join(map(str, self.input_shape[1:]))}), got {got}")
        xs = np.ascontiguousarray(x.detach().to("cpu", torch.float32).contiguous().numpy())
        n = xs.shape[0]
        shape, nd = _c_int64_4(), ctypes.c_int()
        if self._lib.bnn_output_shape(self._handle, n, shape, ctypes.byref(nd)) != 0:
            raise DeployFormatError(self._lib.bnn_last_error().decode("utf-8", "replace"))
        out = np.empty(tuple(shape)[:nd.value], dtype=np.float32)
        if self._lib.bnn_run(self._handle, xs.ctypes.data, n, out.ctypes.data, out.size) != 0:
            raise DeployFormatError(self._lib.bnn_last_error().decode("utf-8", "replace"))
        return torch.from_numpy(out)

    def profile(self, enable: bool = True) -> None:
        """Time every node in the runs that follow (enable) or stop; `layers()` reads the sums."""
        self._lib.bnn_profile(self._handle, int(enable))

    def layers(self) -> list[tuple[str, str, float]]:
        """(node name, op, seconds spent in it since profiling began) in graph order."""
        name, op, seconds = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_double()
        rows = []
        for i in range(self._lib.bnn_layer_count(self._handle)):
            if self._lib.bnn_layer_info(self._handle, i, ctypes.byref(name), ctypes.byref(op), ctypes.byref(seconds)) != 0:
                raise DeployFormatError(self._lib.bnn_last_error().decode("utf-8", "replace"))
            rows.append((name.value.decode(), op.value.decode(), seconds.value))
        return rows

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._lib.bnn_free(handle)
            self._handle = None
