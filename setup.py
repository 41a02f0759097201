"""Build of bnnkit's native kernels (everything else is in pyproject.toml).

Plain C++ against the CPython C API only (no torch headers: torch is not available in the
isolated build environment). One extension, bnnkit.native._ext: the deploy runtime's
XOR-popcount convolutions, whose AVX-512 and AVX2 code paths are compiled inside `#pragma GCC
target` regions and chosen at run time from the CPU's features, and the training kernels of
csrc/bnn_act.cpp (GCC vector extensions, an AVX2 clone chosen at load time). The package runs on
any x86-64 and builds with the portable paths elsewhere.
"""
import os
import sys

from setuptools import Extension, setup

SOURCES = ["csrc/bnn_module.cpp", "csrc/bnn_portable.cpp", "csrc/bnn_avx2.cpp", "csrc/bnn_avx512.cpp",
           "csrc/bnn_act.cpp"]


def _flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    compile_args = ["-O3", "-std=c++17", "-fno-strict-aliasing", "-ffp-contract=off", "-fopenmp",
                    "-Wno-maybe-uninitialized", "-Wno-uninitialized"]
    link_args = ["-fopenmp"]
    if os.environ.get("BNNKIT_DEBUG"):
        compile_args += ["-DBNNKIT_DEBUG", "-O1", "-g"]
    return compile_args, link_args


compile_args, link_args = _flags()
setup(
    ext_modules=[
        Extension(
            "bnnkit.native._ext",
            sources=SOURCES,
            depends=["csrc/bnn_host.h", "csrc/bnn_kernels.h", "csrc/bnn_impl.h", "csrc/bnn_nonlin.h", "csrc/bnn_torch_sum.h"],
            include_dirs=["csrc"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            language="c++",
        )
    ]
)
