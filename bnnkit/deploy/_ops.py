"""The operations a .bnn graph may name, shared by the exporter and the runtime.

A file can only call the functions and tensor methods listed here (by these names); anything else
is refused at load time, so a file never makes the runtime call arbitrary code.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

FORMAT_NAME = "bnnkit-deploy"
FORMAT_VERSION = 3  # 2: binary convs carry `prescale` and round their epilogue as the model does;
#                    3: the graph string has its own sha256 (`graph_sha256`)

# name in the file -> callable
FUNCTIONS = {
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.truediv": operator.truediv,
    "operator.floordiv": operator.floordiv,
    "operator.neg": operator.neg,
    "operator.getitem": operator.getitem,
    "torch.add": torch.add,
    "torch.mul": torch.mul,
    "torch.cat": torch.cat,
    "torch.flatten": torch.flatten,
    "torch.relu": torch.relu,
    "torch.sigmoid": torch.sigmoid,
    "torch.tanh": torch.tanh,
    "torch.mean": torch.mean,
    "F.relu": F.relu,
    "F.relu6": F.relu6,
    "F.leaky_relu": F.leaky_relu,
    "F.hardtanh": F.hardtanh,
    "F.sigmoid": torch.sigmoid,
    "F.tanh": torch.tanh,
    "F.pad": F.pad,
    "F.avg_pool2d": F.avg_pool2d,
    "F.max_pool2d": F.max_pool2d,
    "F.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "F.adaptive_max_pool2d": F.adaptive_max_pool2d,
    "F.log_softmax": F.log_softmax,  # IR-Net's heads (a file naming it needs a runtime that lists it)
    "F.dropout": lambda x, *a, **k: x,
}

# tensor methods a graph may call
METHODS = frozenset({
    "size", "view", "reshape", "flatten", "mean", "sum", "contiguous", "add", "sub", "mul", "div", "relu",
    "squeeze", "unsqueeze", "permute", "transpose", "clamp", "hardtanh", "sigmoid", "tanh", "neg", "__getitem__",
    "dim", "float", "clone", "detach",
})

# functions and methods that reduce over space or channels: their float32 result depends on the
# summation order, hence on the memory layout; the runtime runs them in the layout the model had
LAYOUT_SENSITIVE = frozenset({"torch.mean", "F.avg_pool2d", "F.adaptive_avg_pool2d", "mean", "sum"})

# node kinds of the file's graph
NODE_OPS = frozenset({"input", "bconv", "wconv", "conv", "linear", "batchnorm", "prelu", "constant",
                      "call", "method", "alias", "output"})


def function_name(fn) -> str | None:
    """The file name of a callable, or None if the runtime does not provide it."""
    for name, f in FUNCTIONS.items():
        if f is fn:
            return name
    return None
