"""Deployment of binary networks: export to a packed file, run it with native XOR-popcount kernels.

    from bnnkit import deploy
    deploy.export(model, "model.bnn", example_input_shape=(1, 3, 32, 32))
    net = deploy.load("model.bnn")          # callable; runs on CPU from the file alone
    logits = net(images)
    net = deploy.load("model.bnn", engine="libbnn")   # the same file through libbnn (`make runtime`)

File format: docs/deploy_format.md. Command lines: `bnnkit export` (cli_export) and
`bnnkit bench-deploy` (cli_bench). The runtime part (load) does not import bnnkit's training code.
"""
from __future__ import annotations

from typing import Any

from ._errors import DeployExportError, DeployFormatError
from ._ops import FORMAT_VERSION
from ._runtime import Runtime
from ._runtime import load as _load_python

__all__ = ["DeployExportError", "DeployFormatError", "ENGINES", "FORMAT_VERSION", "Runtime", "available_isas", "cli_bench",
           "cli_export", "export", "load"]


def export(model, path, *, example_input_shape, source: dict[str, Any] | None = None,
           compact: bool = False) -> dict[str, Any]:
    """Export `model` to a packed .bnn file (compact: real layers' weights int8/float16); see
    bnnkit.deploy._export.export."""
    from ._export import export as _export
    return _export(model, path, example_input_shape=example_input_shape, source=source, compact=compact)


ENGINES = ("python", "libbnn")


def load(path, *, threads: int | None = None, isa: str | None = None, fuse: bool = True, engine: str = "python"):
    """Load a .bnn file as a callable network: `net(x)` returns the logits of a float32 (N, C, H, W) batch.

    engine "python": bnnkit's runtime (bnnkit.deploy._runtime.Runtime: native binary kernels, PyTorch
    for the real layers). engine "libbnn": the C++ library of runtime/ (`make runtime`, or
    $BNNKIT_LIBBNN) through ctypes, which is what `bnnrun` and C programs run; its instruction set is
    chosen once per process (`isa` or $BNN_ISA before the first load). `fuse` applies to "python" only.
    """
    if engine == "python":
        return _load_python(path, threads=threads, isa=isa, fuse=fuse)
    if engine == "libbnn":
        from ._libbnn import LibbnnRuntime
        return LibbnnRuntime(path, threads=threads, isa=isa)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def available_isas() -> list[str]:
    """Instruction-set paths of the native kernels this CPU can run (portable, avx2, avx512)."""
    from ..native.kernels import available_isas as _a
    return _a()


def cli_export(argv: list[str] | None = None) -> int:
    """`bnnkit export CKPT -o model.bnn`: see bnnkit.deploy._cli."""
    from ._cli import cli_export as _c
    return _c(argv)


def cli_bench(argv: list[str] | None = None) -> int:
    """`bnnkit bench-deploy`: see bnnkit.deploy._cli."""
    from ._cli import cli_bench as _c
    return _c(argv)
