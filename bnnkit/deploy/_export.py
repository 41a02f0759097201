"""Export: trace a model with torch.fx (binary convolutions as leaf modules), fold each binary
conv's alpha and following BatchNorm into per-channel constants, pack its weights 1 bit each,
and write the graph and tensors as a .bnn file (docs/deploy_format.md).

Works on any model built from BinaryConv2d-like layers (an nn.Conv2d with `binary_weight()`) and
standard torch.nn layers and functions listed in _ops; nothing is specific to one model.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..native.affine import epilogue_affine
from ..native.bits import pack_signs
from ._errors import DeployExportError
from ._format import write
from ._ops import FORMAT_NAME, FORMAT_VERSION, METHODS, function_name


def is_binary_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and callable(getattr(m, "binary_weight", None))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_binary_conv(m) or super().is_leaf_module(m, qualname)


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _encode(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"ref": a.name}
    if a is None or isinstance(a, (bool, int, str)):
        return a
    if isinstance(a, float):
        return a
    if isinstance(a, slice):
        return {"slice": [_encode(a.start), _encode(a.stop), _encode(a.step)]}
    if isinstance(a, tuple):
        return {"tuple": [_encode(x) for x in a]}
    if isinstance(a, list):
        return {"list": [_encode(x) for x in a]}
    if a is Ellipsis:
        return {"ellipsis": True}
    raise DeployExportError(f"cannot export an argument of type {type(a).__name__} ({a!r})")


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.zero_weights = 0

    def tensor(self, node: str, key: str, t: torch.Tensor) -> str:
        name = f"{node}.{key}"
        self.tensors[name] = t.detach().cpu().contiguous()
        return name

    def add(self, name: str, op: str, args: list, kwargs: dict | None = None, attrs: dict | None = None,
            tensors: dict[str, str] | None = None) -> None:
        self.nodes.append({"name": name, "op": op, "args": args, "kwargs": kwargs or {},
                           "attrs": attrs or {}, "tensors": tensors or {}})


def _binary_conv(b: _Builder, name: str, x: fx.Node, conv: nn.Conv2d, bn: nn.Module | None) -> None:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise DeployExportError(f"{name}: only numeric zero padding is supported (got {conv.padding_mode}, {conv.padding})")
    try:
        wb = conv.binary_weight().detach().cpu().float()
    except Exception as e:
        raise DeployExportError(f"{name}: its weights are not binary in eval mode ({e}); "
                                "export a model whose binary convs give ±1 weights (BiPer: stage 2)") from None
    O = wb.shape[0]
    mag = wb.abs().reshape(O, -1)
    m = mag.amax(1)
    if not bool(torch.isfinite(m).all()):
        raise DeployExportError(f"{name}: binary weights contain NaN or inf")
    zero = mag == 0
    n_zero = int(zero.count_nonzero())
    n_at_m = int((mag == m[:, None]).count_nonzero())
    n_dead = int((m == 0).count_nonzero()) * mag.shape[1]  # rows that are all 0 count in both
    if n_at_m + n_zero - n_dead != mag.numel():  # some |w| is neither 0 nor the row's magnitude
        off = (mag != m[:, None]) & ~zero
        if bool(((mag - m[:, None]).abs() > 1e-6 * m[:, None])[off].any()):
            raise DeployExportError(f"{name}: binary_weight() is not ±c per output channel, so it cannot be packed to 1 bit")
    b.zero_weights += n_zero
    # the model computes conv(±1) (an exact integer), times alpha (one rounding), then BatchNorm:
    # keep that order, so the runtime rounds where the model rounds
    prescale = m.float()
    if getattr(conv, "alpha", None) is not None:
        alpha = conv.alpha.detach().cpu().float().reshape(-1)
        prescale = alpha if bool((m == 1).all()) else prescale * alpha
    if getattr(conv, "bias", None) is not None:
        raise DeployExportError(f"{name}: binary convs with a bias are not supported")
    scale, bias = epilogue_affine(bn, O)
    binary_input = bool(getattr(conv, "binary_input", True))
    quant = getattr(conv, "input_quantizer", None)
    if binary_input and quant is not None and not getattr(quant, "sign_valued", True):
        raise DeployExportError(f"{name}: its input quantizer ({type(quant).__name__}) does not give sign(x - t) "
                                "values, so the runtime's 1-bit inputs would not reproduce it")
    attrs = {"in_channels": conv.in_channels, "out_channels": O, "kernel": _pair(conv.kernel_size),
             "stride": _pair(conv.stride), "padding": _pair(conv.padding), "dilation": _pair(conv.dilation),
             "groups": conv.groups, "center": bool(getattr(quant, "centered", False)) if binary_input else False}
    tensors = {"weight": b.tensor(name, "weight", pack_signs(wb < 0)),
               "prescale": b.tensor(name, "prescale", prescale),
               "scale": b.tensor(name, "scale", scale),
               "bias": b.tensor(name, "bias", bias)}
    if n_zero:
        # weights that are exactly 0 (sign 0): packed as +1, listed here so the runtime subtracts
        # what the +1 added; rows are (out channel, in channel within the group, ky, kx)
        tensors["zeros"] = b.tensor(name, "zeros", torch.nonzero(wb == 0).to(torch.int32))
    b.add(name, "bconv" if binary_input else "wconv", [{"ref": x.name}], attrs=attrs, tensors=tensors)


def _module_node(b: _Builder, node: fx.Node, mod: nn.Module) -> None:
    name, x = node.name, node.args[0] if node.args else None
    ref = [{"ref": x.name}] if isinstance(x, fx.Node) else []
    if len(node.args) != 1 or node.kwargs:
        raise DeployExportError(f"module {node.target} ({type(mod).__name__}) is called with other than one tensor argument")

    def call(fn: str, *args: Any, **kwargs: Any) -> None:
        b.add(name, "call", ref + [_encode(a) for a in args], {k: _encode(v) for k, v in kwargs.items()}, {"fn": fn})

    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.running_mean is None:
            raise DeployExportError(f"{node.target}: BatchNorm without running statistics cannot be exported")
        t = {"running_mean": b.tensor(name, "running_mean", mod.running_mean.float()),
             "running_var": b.tensor(name, "running_var", mod.running_var.float())}
        if mod.weight is not None:
            t["weight"] = b.tensor(name, "weight", mod.weight.float())
            t["bias"] = b.tensor(name, "bias", mod.bias.float())
        b.add(name, "batchnorm", ref, attrs={"eps": float(mod.eps), "num_features": mod.num_features}, tensors=t)
    elif isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise DeployExportError(f"{node.target}: only numeric zero padding is supported")
        t = {"weight": b.tensor(name, "weight", mod.weight.float())}
        if mod.bias is not None:
            t["bias"] = b.tensor(name, "bias", mod.bias.float())
        b.add(name, "conv", ref, attrs={"stride": _pair(mod.stride), "padding": _pair(mod.padding),
                                        "dilation": _pair(mod.dilation), "groups": mod.groups}, tensors=t)
    elif isinstance(mod, nn.Linear):
        t = {"weight": b.tensor(name, "weight", mod.weight.float())}
        if mod.bias is not None:
            t["bias"] = b.tensor(name, "bias", mod.bias.float())
        b.add(name, "linear", ref, tensors=t)
    elif isinstance(mod, nn.PReLU):
        b.add(name, "prelu", ref, tensors={"weight": b.tensor(name, "weight", mod.weight.float())})
    elif isinstance(mod, nn.ReLU):
        call("F.relu")
    elif isinstance(mod, nn.ReLU6):
        call("F.relu6")
    elif isinstance(mod, nn.Hardtanh):
        call("F.hardtanh", float(mod.min_val), float(mod.max_val))
    elif isinstance(mod, nn.LeakyReLU):
        call("F.leaky_relu", float(mod.negative_slope))
    elif isinstance(mod, nn.Sigmoid):
        call("F.sigmoid")
    elif isinstance(mod, nn.Tanh):
        call("F.tanh")
    elif isinstance(mod, nn.MaxPool2d):
        call("F.max_pool2d", mod.kernel_size, mod.stride, mod.padding, mod.dilation, bool(mod.ceil_mode))
    elif isinstance(mod, nn.AvgPool2d):
        call("F.avg_pool2d", mod.kernel_size, mod.stride, mod.padding, bool(mod.ceil_mode),
             bool(mod.count_include_pad), mod.divisor_override)
    elif isinstance(mod, nn.AdaptiveAvgPool2d):
        call("F.adaptive_avg_pool2d", mod.output_size)
    elif isinstance(mod, nn.Flatten):
        call("torch.flatten", mod.start_dim, mod.end_dim)
    elif isinstance(mod, (nn.Identity, nn.Dropout)):
        b.add(name, "alias", ref)
    else:
        raise DeployExportError(f"module {node.target} of type {type(mod).__name__} is not supported by the "
                                "deployment runtime; use standard torch.nn layers or add it to bnnkit.deploy._export")


def build(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """The file graph and tensors of `model` (in eval mode); also the count of zero binary weights."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    mods = dict(model.named_modules())
    b = _Builder()
    folded: dict[str, str] = {}  # BN node name -> binary conv node it was folded into
    users = {n.name: list(n.users) for n in graph.nodes}
    for node in graph.nodes:
        if node.name in folded:
            continue
        if node.op == "placeholder":
            if b.nodes:
                raise DeployExportError("the model's forward takes more than one input; the runtime supports one")
            b.add(node.name, "input", [])
        elif node.op == "output":
            b.add(node.name, "output", [_encode(node.args[0])])
        elif node.op == "get_attr":
            val = _get_attr(model, node.target)
            if not isinstance(val, torch.Tensor):
                raise DeployExportError(f"attribute {node.target} is not a tensor")
            b.add(node.name, "constant", [], tensors={"value": b.tensor(node.name, "value", val)})
        elif node.op == "call_module":
            mod = mods[node.target]
            if is_binary_conv(mod):
                if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
                    raise DeployExportError(f"binary conv {node.target} must be called on one tensor")
                bn = None
                u = users[node.name]
                if (len(u) == 1 and u[0].op == "call_module" and isinstance(mods[u[0].target], nn.BatchNorm2d)
                        and len(u[0].args) == 1 and not u[0].kwargs):
                    bn = mods[u[0].target]
                    folded[u[0].name] = node.name
                _binary_conv(b, node.name, node.args[0], mod, bn)
                if bn is not None:
                    b.add(u[0].name, "alias", [{"ref": node.name}])
            else:
                _module_node(b, node, mod)
        elif node.op == "call_function":
            fn = "F.dropout" if node.target is F.dropout else function_name(node.target)
            if fn is None:
                raise DeployExportError(f"function {getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)} "
                                        "is not supported by the deployment runtime (see bnnkit.deploy._ops.FUNCTIONS)")
            kwargs = {k: _encode(v) for k, v in node.kwargs.items() if k != "inplace"}
            b.add(node.name, "call", [_encode(a) for a in node.args], kwargs, {"fn": fn})
        elif node.op == "call_method":
            if node.target not in METHODS or node.target.endswith("_"):
                raise DeployExportError(f"tensor method {node.target!r} is not supported by the deployment runtime")
            kwargs = {k: _encode(v) for k, v in node.kwargs.items()}
            b.add(node.name, "method", [_encode(a) for a in node.args], kwargs, {"method": node.target})
        else:  # pragma: no cover
            raise DeployExportError(f"unsupported graph node {node.op}")
    return {"nodes": b.nodes}, b.tensors, b.zero_weights


def _get_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---- compact files ---------------------------------------------------------------------------
# The rule (docs/deploy.md, "Compact files", has the measurements behind it): the stem, a conv
# that reads the network input, goes float16, since its rounding reaches every binary activation
# after it (alone in int8 it made nearly all of the compact file's change in a trained ResNet-20)
# and its weights are few (3 input channels); any other weight goes int8 unless int8's error on
# its worst output channel, rms(dequantized - w) / rms(w), exceeds INT8_MAX_RELATIVE_ERROR, then
# float16.
#
# Why 0.02: rounding to a step of peak/127 leaves an rms error of about step/sqrt(12), so a
# channel's relative error is about (peak/rms) / 440. Bell-shaped channels have peak/rms 3 to 6
# (0.007 to 0.014): measured, 0.006-0.010 on the worst channel of every trained CIFAR ResNet-20 of
# the comparison runs, 0.004-0.010 on the initialised ImageNet ResNet-18s, 0.011 on a Gaussian
# 1000x512. A bound of 0.01 sent such ordinary layers to float16 by chance (a trained IR-Net
# ResNet-20's classifier at 0.0102, BiPer's ResNet-18 layer4 downsample at 0.0101), twice the
# bytes for nothing, and an ImageNet classifier in float16 alone costs 1 MB of the 2.3 MB that
# the 1/20 size target allows. 0.02 (peak about 9 rms)
# sends only a channel whose outliers set the step for all its other weights. The cost is small:
# 2 % rms noise on the trained ResNet-20's classifier changed 1.1-1.4 % of its predictions and
# its top-1 by at most 0.4 points (2,000 test images; 0.5-0.8 % of predictions at 1 %).
INT8_MAX_RELATIVE_ERROR = 0.02
# float16 is used where it holds the weight to this (float16 rounds to 2**-11 relative; overflow
# to inf or a channel of subnormals exceeds it); float32 is kept otherwise.
FLOAT16_MAX_RELATIVE_ERROR = 2.0 ** -10


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Symmetric int8 of a float32 weight per output channel (dimension 0): (q int8, scale float32 [O])
    with scale[o] = max|w[o]| / 127 and q = round(w / scale), so that q.float() * scale[o] is the
    dequantized weight; None where no positive finite scale exists (non-finite or subnormal weights)."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    peak = rows.abs().amax(1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))  # an all-zero channel: q = 0, any scale
    if not bool(torch.isfinite(rows).all()) or not bool((scale >= torch.finfo(torch.float32).tiny).all()):
        return None
    q = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight of an int8 one: float32(q[o, ...]) * scale[o], one float32 multiply."""
    return q.float() * scale.reshape(-1, *[1] * (q.dim() - 1))


def channel_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    """The worst output channel's rms(approx - w) / rms(w) (an all-zero channel counts 0 if approx
    is 0 there too, inf otherwise)."""
    rows, other = w.detach().float().reshape(w.shape[0], -1), approx.detach().float().reshape(w.shape[0], -1)
    err, size = (other - rows).norm(dim=1), rows.norm(dim=1)
    rel = torch.where(size > 0, err / size.clamp_min(torch.finfo(torch.float32).tiny),
                      torch.where(err > 0, torch.full_like(err, math.inf), torch.zeros_like(err)))
    return float(rel.max()) if bool(torch.isfinite(other).all()) else math.inf


def compact_weights(graph: dict[str, Any], tensors: dict[str, torch.Tensor], *,
                    max_int8_error: float = INT8_MAX_RELATIVE_ERROR, stem_float16: bool = True) -> dict[str, int]:
    """Store every `conv` and `linear` node's float32 weight in `tensors` as int8 per output channel
    (adding its `weight_scale` tensor), as float16 for the stem (with stem_float16) or where int8's
    worst channel error exceeds max_int8_error, or keep it float32 where float16 would not hold it
    either; in place, on a file's graph and tensors (build's, or read's). Marks the graph
    `"compact": true` when anything was stored compact. Returns {"int8": count, "float16": count}."""
    counts = {"int8": 0, "float16": 0}
    inputs = [{"ref": n["name"]} for n in graph["nodes"] if n["op"] == "input"]
    for node in graph["nodes"]:
        if node["op"] not in ("conv", "linear") or "weight" not in node["tensors"]:
            continue
        name = node["tensors"]["weight"]
        w = tensors[name]
        if w.dtype != torch.float32 or w.dim() < 2 or w.numel() == 0:
            continue
        stem = stem_float16 and node["op"] == "conv" and node["args"][:1] == inputs[:1]
        quantized = None if stem else int8_per_channel(w)
        if quantized is not None and channel_error(w, dequantize_int8(*quantized)) <= max_int8_error:
            tensors[name], scale = quantized
            node["tensors"]["weight_scale"] = f"{node['name']}.weight_scale"
            tensors[node["tensors"]["weight_scale"]] = scale
            counts["int8"] += 1
        elif channel_error(w, w.half()) <= FLOAT16_MAX_RELATIVE_ERROR:
            tensors[name] = w.half()
            counts["float16"] += 1
    if counts["int8"] or counts["float16"]:
        graph["compact"] = True
    return counts


def export(model: nn.Module, path: str | os.PathLike, *, example_input_shape: tuple[int, ...] | list[int],
           source: dict[str, Any] | None = None, compact: bool = False) -> dict[str, Any]:
    """Write `model` (evaluated in eval mode) as a packed .bnn file at `path`.

    example_input_shape: the input the model expects, e.g. (1, 3, 224, 224); the batch size is
    free at run time, the other dimensions are recorded. compact: store the real convs' and linear
    layers' weights as int8 per output channel, or float16 where int8 is not enough
    (compact_weights; no longer bit-exact, docs/deploy.md "Compact files"). Returns a summary
    (sizes, layer counts, and how many weights went int8 / float16).
    The model is put in eval mode while it is traced and its previous mode restored; its weights
    are not changed (binary weights come from the side-effect-free `binary_weight()`)."""
    shape = [int(s) for s in example_input_shape]
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"example_input_shape must be (N, C, H, W) with positive sizes, got {tuple(example_input_shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph, tensors, zeros = build(model)
    finally:
        model.train(was_training)
    if zeros:
        warnings.warn(f"{zeros} binary weight(s) are exactly 0 (sign 0); the file packs them as +1 and lists "
                      "them, and the runtime corrects for them exactly (slower for those layers)", stacklevel=2)
    spec = getattr(model, "bnnkit_spec", None)
    graph.update({
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "input_shape": shape,
        "producer": {"bnnkit": __version__, "torch": torch.__version__},
        "source": source if source is not None else (dict(spec) if isinstance(spec, dict) else {}),
    })
    stored = compact_weights(graph, tensors) if compact else {"int8": 0, "float16": 0}
    write(path, graph, tensors)
    n_b = sum(1 for n in graph["nodes"] if n["op"] in ("bconv", "wconv"))
    return {"path": str(path), "bytes": os.path.getsize(path), "binary_convs": n_b,
            "nodes": len(graph["nodes"]), "zero_weights": zeros,
            "compact": bool(compact), "int8_tensors": stored["int8"], "float16_tensors": stored["float16"],
            "float32_params_bytes": 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())}
