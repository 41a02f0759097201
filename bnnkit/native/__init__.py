"""The native kernels (csrc/, compiled by the package build as bnnkit.native._ext) and their
Python bindings: the lowest layer of bnnkit, used by the training fast paths (bnnkit.nn) and by
deployment (bnnkit.deploy) alike.

  kernels  loading the extension, choosing an instruction set, checked calls into it
  bits     packing and unpacking signs into 64-bit words
  affine   folding a BatchNorm and a scale into a kernel's per-channel epilogue
"""
