"""The deployment runtime: runs a .bnn file on CPU from the file alone.

Binary convolutions run in the native XOR-popcount kernels (bnnkit.native); real layers
(stem conv, real shortcuts, BatchNorm1d, classifier, pooling, activations) through PyTorch.
Imports nothing of bnnkit's training code (models, methods, layers) and runs under
torch.inference_mode(). Every node of the file is validated when it is loaded.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..native import kernels as _native
from ..native.affine import bn_affine_from
from ..native.bits import unpack_signs, unused_bits_clear
from ._errors import DeployFormatError
from ._format import read
from ._ops import FUNCTIONS, LAYOUT_SENSITIVE, METHODS, NODE_OPS


class _Ref:
    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


def _materialize(obj: Any, env: list) -> Any:
    if isinstance(obj, _Ref):
        return env[obj.slot]
    if isinstance(obj, tuple):
        return tuple(_materialize(o, env) for o in obj)
    if isinstance(obj, list):
        return [_materialize(o, env) for o in obj]
    if isinstance(obj, slice):
        return slice(_materialize(obj.start, env), _materialize(obj.stop, env), _materialize(obj.step, env))
    if isinstance(obj, dict):
        return {k: _materialize(v, env) for k, v in obj.items()}
    return obj


def _has_ref(obj: Any) -> bool:
    if isinstance(obj, _Ref):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_ref(o) for o in obj)
    if isinstance(obj, slice):
        return any(_has_ref(o) for o in (obj.start, obj.stop, obj.step))
    if isinstance(obj, dict):
        return any(_has_ref(o) for o in obj.values())
    return False


class _NodeFailed(Exception):
    """A step that raised during load's trial run (Runtime._trial_run turns it into one line)."""

    def __init__(self, step: "_Step", error: Exception) -> None:
        super().__init__(step.name)
        self.step = step
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        if isinstance(error, DeployFormatError):  # its fix is the one _trial_run appends
            reason = reason.split("; ")[0]
        self.reason = reason[:200]


class _Step:
    __slots__ = ("name", "op", "slot", "run", "reads", "info")

    def __init__(self, name: str, op: str, slot: int, run: Callable[[list, dict], Any], reads: list[int], info: dict) -> None:
        self.name, self.op, self.slot, self.run, self.reads, self.info = name, op, slot, run, reads, info


class Runtime:
    """A loaded .bnn network: `runtime(x)` returns the logits for a float32 batch x (N, C, H, W).

    threads: native threads for the binary convs (None: torch.get_num_threads() at each call; the
    real layers use PyTorch's own setting). isa: 'avx512', 'avx2', 'portable' or None/'auto'
    (default: $BNNKIT_ISA, else the best this CPU has). fuse: compute each binary conv's residual
    add and activation in its epilogue where the graph allows (the same bits; False runs them as
    PyTorch ops, for comparison)."""

    def __init__(self, graph: dict[str, Any], tensors: dict[str, torch.Tensor], *, threads: int | None = None,
                 isa: str | None = None, source: str = "<memory>", fuse: bool = True) -> None:
        self.source = source
        self.graph = graph
        self.threads = threads
        self.isa = _native.resolve_isa(isa)
        self.input_shape: list[int] = []
        self.meta = {k: v for k, v in graph.items() if k not in ("nodes", "digests")}
        # own, freshly allocated (aligned) copies: BLAS and oneDNN results can depend on a buffer's
        # alignment, and the model's parameters are aligned allocations
        self._tensors = {k: t.clone() for k, t in tensors.items()}
        self.kernels: dict[str, tuple] = {}  # bconv node -> (PackedConv, packing (pad, center, groups))
        self._threshold_keys: set[tuple] = set()  # the packings whose thresholds a conv reads (zero weights)
        self._build(graph, fuse)

    # ---- loading -----------------------------------------------------------------------
    def _fail(self, problem: str) -> DeployFormatError:
        return DeployFormatError(f"{self.source}: {problem}; re-export the model with `bnnkit export CKPT -o FILE`")

    def _tensor(self, node: dict, key: str, dtype: torch.dtype, shape: tuple | None = None, dims: int | None = None,
                optional: bool = False) -> torch.Tensor | None:
        names = node["tensors"]
        if key not in names:
            if optional:
                return None
            raise self._fail(f"node {node['name']!r} lacks tensor {key!r}")
        tname = names[key]
        if not isinstance(tname, str) or tname not in self._tensors:
            raise self._fail(f"node {node['name']!r} names a tensor {tname!r} that is not in the file")
        t = self._tensors[tname]
        if t.dtype != dtype:
            raise self._fail(f"tensor {tname!r} has dtype {t.dtype}, expected {dtype}")
        if dims is not None and t.dim() != dims:
            raise self._fail(f"tensor {tname!r} has shape {tuple(t.shape)}, expected {dims} dimensions")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise self._fail(f"tensor {tname!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t

    def _real_weight(self, node: dict, dims: int) -> torch.Tensor:
        """A conv's or linear node's float32 weight: stored float32, or compact (docs/deploy_format.md):
        float16, widened exactly, or int8 with a float32 `weight_scale` [O], finite and > 0, giving
        float32(q[o, ...]) * weight_scale[o]."""
        names = node["tensors"]
        stored = self._tensors.get(names.get("weight")) if isinstance(names.get("weight"), str) else None
        if stored is None or stored.dtype not in (torch.float16, torch.int8):
            if "weight_scale" in names:
                raise self._fail(f"node {node['name']!r} has a weight_scale but its weight is not int8")
            return self._tensor(node, "weight", torch.float32, dims=dims)
        w = self._tensor(node, "weight", stored.dtype, dims=dims)
        if w.dtype == torch.float16:
            if "weight_scale" in names:
                raise self._fail(f"node {node['name']!r} has a weight_scale but its weight is not int8")
            return w.float()
        scale = self._tensor(node, "weight_scale", torch.float32, (w.shape[0],))
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise self._fail(f"tensor {names['weight_scale']!r} of int8 weight {names['weight']!r} must be finite and > 0")
        return w.float() * scale.view(-1, *[1] * (dims - 1))

    def _ints(self, node: dict, key: str, n: int, minimum: int) -> list[int]:
        v = node["attrs"].get(key)
        if n == 1:
            v = [v]
        if (not isinstance(v, list) or len(v) != n
                or not all(isinstance(i, int) and not isinstance(i, bool) and minimum <= i < 2 ** 31 for i in v)):
            raise self._fail(f"node {node['name']!r}: attribute {key!r} must be {n} integer(s) >= {minimum}, got {node['attrs'].get(key)!r}")
        return v

    def _decode(self, a: Any, slots: dict[str, int], node: str) -> Any:
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        if isinstance(a, dict) and len(a) == 1:
            (k, v), = a.items()
            if k == "ref":
                if not isinstance(v, str) or v not in slots:
                    raise self._fail(f"node {node!r} refers to {v!r}, which is not an earlier node")
                return _Ref(slots[v])
            if k == "slice" and isinstance(v, list) and len(v) == 3:
                return slice(*(self._decode(x, slots, node) for x in v))
            if k == "tuple" and isinstance(v, list):
                return tuple(self._decode(x, slots, node) for x in v)
            if k == "list" and isinstance(v, list):
                return [self._decode(x, slots, node) for x in v]
            if k == "ellipsis":
                return Ellipsis
        raise self._fail(f"node {node!r} has an argument of unknown form {str(a)[:60]}")

    def _build(self, graph: dict[str, Any], fuse: bool) -> None:
        nodes = graph.get("nodes")
        if not isinstance(nodes, list) or len(nodes) < 2:
            raise self._fail("the graph has no node list")
        shape = graph.get("input_shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape)):
            raise self._fail("the graph's input_shape must be 4 positive integers")
        self.input_shape = shape
        slots: dict[str, int] = {}
        steps: list[_Step] = []
        pack_groups: dict[tuple, list] = {}  # (input slot, center, groups) -> [pad_h, pad_w]
        fusions = _plan_fusions(nodes) if fuse else {}
        pools = _plan_bn_pools(nodes) if fuse else {}
        absorbed = {n: f["conv"] for f in fusions.values() for n in f["absorbed"]}
        absorbed.update({n: bn for bn, f in pools.items() for n in f["absorbed"]})
        fused = {**fusions, **pools}
        for i, node in enumerate(nodes):
            if not (isinstance(node, dict) and isinstance(node.get("name"), str) and node.get("op") in NODE_OPS
                    and isinstance(node.get("args", []), list) and isinstance(node.get("kwargs", {}), dict)
                    and isinstance(node.get("attrs", {}), dict) and isinstance(node.get("tensors", {}), dict)):
                raise self._fail(f"graph node {i} is malformed or has an unknown operation {str(node.get('op') if isinstance(node, dict) else node)[:40]!r} "
                                 "(a newer bnnkit may have written it)")
            node = {"args": [], "kwargs": {}, "attrs": {}, "tensors": {}, **node}
            name, op = node["name"], node["op"]
            if name in slots:
                raise self._fail(f"node name {name!r} is used twice")
            if (op == "input") != (i == 0) or (op == "output") != (i == len(nodes) - 1):
                raise self._fail("the graph must start with its input node and end with its output node")
            args = [self._decode(a, slots, name) for a in node["args"]]
            kwargs = {k: self._decode(v, slots, name) for k, v in node["kwargs"].items()}
            reads = sorted({r.slot for r in _refs((args, kwargs))})
            slot = len(slots)
            run, info = self._make(node, op, args, kwargs, pack_groups, slot)
            if name in fusions:
                run = self._fused_bconv(run, fusions[name], slots, info)
                if fusions[name]["residual"] is not None:
                    reads = sorted({*reads, slots[fusions[name]["residual"]]})
            elif name in pools:
                run = self._fused_bn_pool(node, pools[name], slots, info)
            elif name in absorbed:  # computed by the step of the node that absorbed it
                owner_slot, last = slots[absorbed[name]], fused[absorbed[name]]["absorbed"][-1] == name
                run = (lambda env, ctx, s=owner_slot: env[s]) if last else (lambda env, ctx: None)
                reads = [owner_slot] if last else []
                info = {**info, "fused_into": absorbed[name]}
            slots[name] = slot
            steps.append(_Step(name, op, slot, run, reads, info))
        self._steps = steps
        self._pack_groups = pack_groups
        # last use of every value, to free intermediates early
        last = {}
        for k, s in enumerate(steps):
            for r in s.reads:
                last[r] = k
        self._free_after: list[list[int]] = [[] for _ in steps]
        for slot, k in last.items():
            if k < len(steps) - 1:
                self._free_after[k].append(slot)
        self._tensors = {}  # everything needed is now held by the steps
        self._trial_run()

    def _trial_run(self) -> None:
        """Run the graph once on zeros of its own input shape, so that attributes consistent with
        every check above but not with each other (a conv's channels against its input, a linear
        layer's width, a bad pooling window) fail here as a DeployFormatError naming the node,
        not on the caller's first batch. Every input shape the runtime accepts differs from this
        one only in N."""
        x = torch.zeros(self.input_shape)
        try:
            out = self.run(x, trial=True)
        except _NodeFailed as e:
            raise self._fail(f"node {e.step.name!r} ({e.step.op}) cannot run on the file's input shape "
                             f"{tuple(self.input_shape)}: {e.reason}") from None
        if not isinstance(out, torch.Tensor):
            raise self._fail(f"the graph's output is a {type(out).__name__}, not a tensor")

    def _packed(self, x: torch.Tensor, key: tuple, pad: list[int], ctx: dict) -> tuple:
        """pack()'s outputs for the input x of the binary convs that share `key` (input slot,
        centring, groups), made by the first of them and kept in ctx for the others."""
        packed = ctx.get(key)
        if packed is None:
            _, center, groups = key
            # the same reduction over the memory order the model has (that of its input,
            # which PyTorch propagates) gives the model's float32 mean to the last bit
            packed = _native.pack(x, groups=groups, pad=tuple(pad), center=center, isa=self.isa,
                                  threads=ctx["threads"], torch_mean=True, mean_layout=ctx["layout"],
                                  return_thresholds=key in self._threshold_keys)
            ctx[key] = packed
        return packed

    def _fused_bconv(self, plain: Callable[[list, dict], Any], fusion: dict, slots: dict[str, int], info: dict):
        """The binary conv's step with the residual add and activation after it done in the kernel's
        epilogue (one float32 rounding each, as PyTorch's ops): one pass over the output instead of
        three, and no Python calls between."""
        conv, (pad, center, groups) = self.kernels[fusion["conv"]]
        src, cout = slots[fusion["src"]], conv.out_channels
        key = (src, center, groups)
        res_slot = slots[fusion["residual"]] if fusion["residual"] is not None else None
        nonlin, act_fn = self._activation(fusion["act"], cout)
        info["fused"] = fusion["absorbed"]

        def run_fused(env, ctx):
            x, r = env[src], env[res_slot] if res_slot is not None else None
            _check_input(x, conv.in_channels, fusion["conv"])
            out_shape = (x.shape[0], cout, *conv.out_size(x.shape[2], x.shape[3]))
            if r is None or (isinstance(r, torch.Tensor) and r.dtype == torch.float32 and r.device.type == "cpu"
                             and tuple(r.shape) == out_shape):
                packed = self._packed(x, key, pad, ctx)
                r = None if r is None else r.contiguous(memory_format=torch.channels_last)
                return conv(packed[0], x.shape[2], x.shape[3], tuple(pad), isa=self.isa, threads=ctx["threads"],
                            ties=packed[2], residual=r, nonlinearity=nonlin)
            y = plain(env, ctx) + r  # a broadcasting add, say: PyTorch's ops decide what it means
            return act_fn(y) if act_fn is not None else y
        return run_fused

    def _activation(self, act: dict | None, channels: int) -> tuple:
        """(the kernels' Nonlinearity, the same as a PyTorch function) of a fused activation, or
        (None, None)."""
        if act is None:
            return None, None
        if act["op"] == "prelu":
            slopes = self._tensor({"tensors": {}, **act}, "weight", torch.float32, dims=1)
            if slopes.numel() not in (1, channels):
                raise self._fail(f"node {act['name']!r}: PReLU has {slopes.numel()} slopes for {channels} channels")
            return _native.Nonlinearity.prelu(slopes, channels), (lambda y: F.prelu(y, slopes))
        lo, hi = act["bounds"]
        return _native.Nonlinearity.hardtanh(lo, hi), (lambda y: F.hardtanh(y, lo, hi))

    def _batchnorm_tensors(self, node: dict) -> tuple:
        """(running_mean, running_var, weight or None, bias or None, eps) of a batchnorm node, checked."""
        rm = self._tensor(node, "running_mean", torch.float32, dims=1)
        c = rm.shape[0]
        rv = self._tensor(node, "running_var", torch.float32, (c,))
        bw = self._tensor(node, "weight", torch.float32, (c,), optional=True)
        bb = self._tensor(node, "bias", torch.float32, (c,), optional=bw is None)
        eps = node["attrs"].get("eps")
        if not isinstance(eps, float) or not 0 < eps < math.inf:
            raise self._fail(f"node {node['name']!r}: eps must be a positive finite number, got {eps!r}")
        return rm, rv, bw, bb, eps

    def _fused_bn_pool(self, node: dict, plan: dict, slots: dict[str, int], info: dict):
        """The step of a BatchNorm with the activation and max pooling after it (_plan_bn_pools):
        one native pass over the stem's largest tensor instead of three PyTorch ops."""
        src = _ref_name(node["args"][0])
        rm, rv, bw, bb, eps = self._batchnorm_tensors(node)
        c = rm.shape[0]
        scale, bias = bn_affine_from(rm, rv, bw, bb, eps)
        nonlin, act_fn = self._activation(plan["act"], c)
        kernel, stride, padding = plan["pool"]
        info["fused"] = plan["absorbed"]
        slot = slots[src]

        def run_bn_pool(env, ctx):
            x = env[slot]
            if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == c and x.dtype == torch.float32 and x.is_cpu \
                    and x.shape[2] + 2 * padding[0] >= kernel[0] and x.shape[3] + 2 * padding[1] >= kernel[1] \
                    and (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()):
                return _native.bn_act_max_pool(x, scale, bias, nonlin, kernel, stride, padding, ctx["threads"])
            y = F.batch_norm(x, rm, rv, bw, bb, False, 0.0, eps)  # PyTorch decides what anything else means
            y = act_fn(y) if act_fn is not None else y
            return F.max_pool2d(y, kernel, stride, padding)
        return run_bn_pool

    def _make(self, node: dict, op: str, args: list, kwargs: dict, pack_groups: dict, slot: int):
        name, attrs = node["name"], node["attrs"]
        info: dict[str, Any] = {}

        def one_input() -> _Ref:
            if len(args) != 1 or not isinstance(args[0], _Ref) or kwargs:
                raise self._fail(f"node {name!r} ({op}) takes exactly one input")
            return args[0]

        if op == "input":
            return (lambda env, ctx: None), info
        if op == "output":
            if len(args) != 1:
                raise self._fail("the output node takes one value")
            out = args[0]
            return (lambda env, ctx: _materialize(out, env)), info
        if op == "alias":
            src = one_input().slot
            return (lambda env, ctx: env[src]), info
        if op == "constant":
            t = self._tensors.get(node["tensors"].get("value")) if isinstance(node["tensors"].get("value"), str) else None
            if t is None:
                raise self._fail(f"constant {name!r} lacks its tensor")
            return (lambda env, ctx: t), info
        if op in ("bconv", "wconv"):
            src = one_input().slot
            cin = self._ints(node, "in_channels", 1, 1)[0]
            cout = self._ints(node, "out_channels", 1, 1)[0]
            kernel = self._ints(node, "kernel", 2, 1)
            stride = self._ints(node, "stride", 2, 1)
            padding = self._ints(node, "padding", 2, 0)
            dilation = self._ints(node, "dilation", 2, 1)
            groups = self._ints(node, "groups", 1, 1)[0]
            center = attrs.get("center", False)
            if not isinstance(center, bool):
                raise self._fail(f"node {name!r}: attribute 'center' must be true or false")
            if cin % groups or cout % groups:
                raise self._fail(f"node {name!r}: channels {cin}->{cout} are not divisible by groups {groups}")
            cg = cin // groups
            w = self._tensor(node, "weight", torch.int64, (cout, kernel[0] * kernel[1], _native.words(cg)))
            prescale = self._tensor(node, "prescale", torch.float32, (cout,))
            scale = self._tensor(node, "scale", torch.float32, (cout,))
            bias = self._tensor(node, "bias", torch.float32, (cout,))
            if not unused_bits_clear(w, cg):
                raise self._fail(f"node {name!r}: packed weights have bits set beyond channel {cg}")
            zeros = self._tensor(node, "zeros", torch.int32, dims=2, optional=True)
            if zeros is not None:
                lim = torch.tensor([cout, cg, kernel[0], kernel[1]], dtype=torch.int32)
                if zeros.shape[1] != 4 or zeros.shape[0] == 0 or bool(((zeros < 0) | (zeros >= lim)).any()):
                    raise self._fail(f"node {name!r}: its list of zero weights has rows outside the weight's shape")
                zeros = zeros.long()
            info = {"in_channels": cin, "out_channels": cout, "kernel": kernel, "stride": stride, "padding": padding,
                    "dilation": dilation, "groups": groups, "center": center}
            if op == "wconv":
                wf = unpack_signs(w, cg, (kernel[0], kernel[1]))
                if zeros is not None:
                    wf[zeros[:, 0], zeros[:, 1], zeros[:, 2], zeros[:, 3]] = 0.0
                affine = _native.epilogue_constants(prescale, scale, bias)

                def run_wconv(env, ctx):
                    x = env[src]
                    _check_input(x, cin, name)
                    # real inputs: oneDNN's summation order follows the memory layout, so use the model's
                    y = F.conv2d(x.contiguous(memory_format=ctx["layout"]), wf, None, stride, padding, dilation, groups)
                    return _native.epilogue(y, *affine)
                return run_wconv, info
            conv = _native.PackedConv(w, scale, bias, prescale=prescale, in_channels=cin, kernel=tuple(kernel), stride=tuple(stride),
                                      padding=tuple(padding), dilation=tuple(dilation), groups=groups)
            key = (src, center, groups)
            pad = pack_groups.setdefault(key, [0, 0])
            pad[0], pad[1] = max(pad[0], padding[0]), max(pad[1], padding[1])
            self.kernels[name] = (conv, (pad, center, groups))

            fix = None
            if zeros is not None:
                # dots[:, o] -= (sum of xb over the zero weights' taps), computed as a small conv of
                # the binarized input with a 0/1 mask, only for the affected channels
                sel, inv = torch.unique(zeros[:, 0], return_inverse=True)
                mask = torch.zeros(len(sel), cin, kernel[0], kernel[1])
                cabs = (zeros[:, 0] // (cout // groups)) * cg + zeros[:, 1]
                mask[inv, cabs, zeros[:, 2], zeros[:, 3]] = 1.0
                fix = (sel, mask)
                info["zero_weights"] = int(zeros.shape[0])
                self._threshold_keys.add(key)

            def run_bconv(env, ctx):
                x = env[src]
                _check_input(x, cin, name)
                packed = self._packed(x, key, pad, ctx)
                out = conv(packed[0], x.shape[2], x.shape[3], tuple(pad), isa=self.isa, threads=ctx["threads"],
                           ties=packed[2], raw=fix is not None)
                if fix is not None:
                    sel, mask = fix
                    xb = torch.sign(x - packed[1].view(-1, 1, 1, 1))  # ties are 0 here as in the bits' fix-up
                    out.index_add_(1, sel, F.conv2d(xb, mask, None, stride, padding, dilation), alpha=-1.0)
                    out = conv.finish(out)
                return out
            return run_bconv, info
        if op == "conv":
            src = one_input().slot
            w = self._real_weight(node, dims=4)
            groups = self._ints(node, "groups", 1, 1)[0]
            b = self._tensor(node, "bias", torch.float32, (w.shape[0],), optional=True)
            stride, padding, dilation = (self._ints(node, "stride", 2, 1), self._ints(node, "padding", 2, 0),
                                         self._ints(node, "dilation", 2, 1))
            if w.shape[0] % groups:
                raise self._fail(f"node {name!r}: {w.shape[0]} output channels not divisible by groups {groups}")

            def run_conv(env, ctx):
                # oneDNN's summation order depends on the memory layout: compute in the model's, go on in NHWC
                y = F.conv2d(env[src].contiguous(memory_format=ctx["layout"]), w, b, stride, padding, dilation, groups)
                return y.contiguous(memory_format=torch.channels_last)
            return run_conv, info
        if op == "linear":
            src = one_input().slot
            w = self._real_weight(node, dims=2)
            b = self._tensor(node, "bias", torch.float32, (w.shape[0],), optional=True)
            return (lambda env, ctx: F.linear(env[src], w, b)), info
        if op == "batchnorm":
            src = one_input().slot
            rm, rv, bw, bb, eps = self._batchnorm_tensors(node)
            return (lambda env, ctx: F.batch_norm(env[src], rm, rv, bw, bb, False, 0.0, eps)), info
        if op == "prelu":
            src = one_input().slot
            w = self._tensor(node, "weight", torch.float32, dims=1)
            return (lambda env, ctx: F.prelu(env[src], w)), info
        if op == "call":
            fn = FUNCTIONS.get(attrs.get("fn"))
            if fn is None:
                raise self._fail(f"node {name!r} calls {attrs.get('fn')!r}, which the runtime does not provide")
            return _caller(fn, args, kwargs, attrs["fn"] in LAYOUT_SENSITIVE), info
        if op == "method":
            meth = attrs.get("method")
            if meth not in METHODS or not args or not isinstance(args[0], _Ref):
                raise self._fail(f"node {name!r} calls tensor method {meth!r}, which the runtime does not provide")
            getter = _caller(lambda obj, *a, **k: getattr(obj, meth)(*a, **k), args, kwargs, meth in LAYOUT_SENSITIVE)
            return getter, info
        raise self._fail(f"unknown operation {op!r}")  # pragma: no cover

    # ---- running -----------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def run(self, x: torch.Tensor, profile: dict[str, float] | None = None,
            shapes: dict[str, tuple] | None = None, *, trial: bool = False) -> torch.Tensor:
        """Logits for x; with `profile`, also accumulate seconds per node name into it; with
        `shapes`, record the input shape of every conv-like node. trial: load's check run, which
        reports a failing node as _NodeFailed."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or list(x.shape[1:]) != self.input_shape[1:]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must have shape (N, {', '.join(map(str, self.input_shape[1:]))}), got {got}")
        threads = self.threads or torch.get_num_threads()
        ctx: dict[Any, Any] = {"threads": max(1, int(threads)),
                               "layout": torch.channels_last if _native.is_channels_last(x) else torch.contiguous_format}
        env: list[Any] = [None] * len(self._steps)
        with torch.inference_mode():
            # channels_last throughout: the binary convs read and write NHWC, and PyTorch's CPU conv and
            # pooling are several times faster in it (max_pool2d of the ImageNet stem: 0.4 vs 7 ms)
            env[0] = x.detach().to("cpu", torch.float32).contiguous(memory_format=torch.channels_last)
            for k, step in enumerate(self._steps[1:], 1):
                if shapes is not None and step.op in ("bconv", "wconv", "conv") and step.reads:
                    shapes[step.name] = tuple(env[step.reads[0]].shape)
                try:
                    if profile is None:
                        env[step.slot] = step.run(env, ctx)
                    else:
                        t0 = time.perf_counter()
                        env[step.slot] = step.run(env, ctx)
                        profile[step.name] = profile.get(step.name, 0.0) + time.perf_counter() - t0
                except Exception as e:
                    if not trial:
                        raise
                    raise _NodeFailed(step, e) from None
                for s in self._free_after[k]:
                    env[s] = None
                    for key in [key for key in ctx if isinstance(key, tuple) and key[0] == s]:
                        del ctx[key]
            out = env[self._steps[-1].slot]
        return out.contiguous() if isinstance(out, torch.Tensor) else out

    # ---- introspection -------------------------------------------------------------------
    def layers(self) -> list[tuple[str, str, dict]]:
        """(name, op, attributes) of every node, in execution order."""
        return [(s.name, s.op, dict(s.info)) for s in self._steps]


def _plan_fusions(nodes: list) -> dict[str, dict]:
    """Binary convs whose output only feeds a residual add and/or an activation, which the
    kernel's epilogue can then compute: {conv name: {"conv", "src", "residual", "act", "absorbed"}}.
    absorbed: the nodes the conv's step computes, in order (aliases, the add, the activation);
    the last of them takes the conv's value. The residual must be computed before the conv."""
    consumers = _consumers(nodes)
    if consumers is None:
        return {}  # a malformed graph: the node checks that follow name the problem
    order = {n["name"]: i for i, n in enumerate(nodes)}

    def only_consumer(name: str) -> dict | None:
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 else None

    plans = {}
    for node in nodes:
        if not (node.get("op") == "bconv" and "zeros" not in (node.get("tensors") or {})
                and len(node.get("args") or []) == 1 and _ref_name(node["args"][0]) is not None):
            continue
        cur, absorbed, residual, act = node["name"], [], None, None
        while (nxt := only_consumer(cur)) is not None and nxt.get("op") == "alias":
            cur = nxt["name"]
            absorbed.append(cur)
        nxt = only_consumer(cur)
        if nxt is not None and nxt.get("op") == "call" and (nxt.get("attrs") or {}).get("fn") in ("operator.add", "torch.add") \
                and not nxt.get("kwargs") and len(nxt.get("args") or []) == 2:
            names = [_ref_name(a) for a in nxt["args"]]
            other = names[1] if names[0] == cur else names[0] if names[1] == cur else None
            if other is not None and other != cur and order.get(other, len(nodes)) < order[node["name"]]:
                residual, cur = other, nxt["name"]
                absorbed.append(cur)
        nxt = only_consumer(cur)
        if nxt is not None and [_ref_name(a) for a in (nxt.get("args") or [])[:1]] == [cur] and \
                ((nxt.get("op") == "prelu" and len(nxt["args"]) == 1) or _hardtanh_bounds(nxt) is not None):
            act = {"op": nxt["op"], "tensors": nxt.get("tensors") or {}, "name": nxt["name"],
                   "bounds": _hardtanh_bounds(nxt)}
            absorbed.append(nxt["name"])
        if residual is None and act is None:
            continue
        plans[node["name"]] = {"conv": node["name"], "src": _ref_name(node["args"][0]), "residual": residual,
                               "act": act, "absorbed": absorbed}
    return plans


def _consumers(nodes: list) -> dict[str, list[dict]] | None:
    """{node name: the nodes whose arguments refer to it}; None for a malformed node list."""
    if not all(isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("args", []), list)
               and all(isinstance(n.get(k, {}), dict) for k in ("kwargs", "attrs", "tensors")) for n in nodes):
        return None
    consumers: dict[str, list[dict]] = {}
    for n in nodes:
        for ref in _file_refs([n.get("args"), n.get("kwargs")]):
            consumers.setdefault(ref, []).append(n)
    return consumers


def _plan_bn_pools(nodes: list) -> dict[str, dict]:
    """Eval-mode BatchNorms whose only consumer is an activation (Hardtanh, ReLU or PReLU), or
    directly, a max pooling that is their value's only use (aliases between them allowed): a
    ResNet stem, which one native pass computes (_native.bn_act_max_pool). {batchnorm name: {"act", "pool": (kernel, stride, padding),
    "absorbed"}}, absorbed as in _plan_fusions."""
    consumers = _consumers(nodes)
    if consumers is None:
        return {}

    def only_consumer(name: str) -> dict | None:
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and [_ref_name(a) for a in (c[0].get("args") or [])[:1]] == [name] else None

    plans = {}
    for node in nodes:
        if node.get("op") != "batchnorm" or len(node.get("args") or []) != 1 or _ref_name(node["args"][0]) is None:
            continue
        act, absorbed = None, []

        def after_aliases(name: str) -> dict | None:
            while (n := only_consumer(name)) is not None and n.get("op") == "alias":
                absorbed.append(n["name"])
                name = n["name"]
            return n

        nxt = after_aliases(node["name"])
        if nxt is not None and ((nxt.get("op") == "prelu" and len(nxt["args"]) == 1 and not nxt.get("kwargs"))
                                or _hardtanh_bounds(nxt) is not None or _is_relu(nxt)):
            bounds = (0.0, math.inf) if _is_relu(nxt) else _hardtanh_bounds(nxt)
            act = {"op": nxt["op"], "tensors": nxt.get("tensors") or {}, "name": nxt["name"], "bounds": bounds}
            absorbed.append(nxt["name"])
            nxt = after_aliases(nxt["name"])
        pool = _max_pool_params(nxt) if nxt is not None else None
        if pool is None:
            continue
        absorbed.append(nxt["name"])
        plans[node["name"]] = {"act": act, "pool": pool, "absorbed": absorbed}
    return plans


def _is_relu(node: dict) -> bool:
    """An F.relu / torch.relu call on one tensor (ReLU is Hardtanh(0, inf), bit for bit)."""
    if node.get("op") != "call" or (node.get("attrs") or {}).get("fn") not in ("F.relu", "torch.relu"):
        return False
    args, kwargs = node.get("args") or [], node.get("kwargs") or {}
    return len(args) <= 2 and all(isinstance(a, bool) for a in args[1:]) and set(kwargs) <= {"inplace"}


def _max_pool_params(node: dict) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride, padding) of an F.max_pool2d call on one tensor with dilation 1, floor
    mode, no indices and padding at most half the window (PyTorch refuses more); else None."""
    if node.get("op") != "call" or (node.get("attrs") or {}).get("fn") != "F.max_pool2d":
        return None
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    args, kwargs = list(node.get("args") or []), dict(node.get("kwargs") or {})
    params = dict(zip(names, args[1:]))
    if len(args) > 7 or set(params) & set(kwargs) or set(kwargs) - set(names):
        return None
    params.update(kwargs)

    def pair(v: Any) -> tuple[int, int] | None:
        if isinstance(v, dict) and len(v) == 1 and isinstance(next(iter(v.values())), list) and set(v) <= {"tuple", "list"}:
            v = next(iter(v.values()))
            v = v * 2 if len(v) == 1 else v
            return (v[0], v[1]) if len(v) == 2 and all(type(i) is int for i in v) else None
        return (v, v) if type(v) is int else None

    kernel = pair(params.get("kernel_size"))
    stride = kernel if params.get("stride") in (None, {"list": []}, {"tuple": []}) else pair(params["stride"])
    padding, dilation = pair(params.get("padding", 0)), pair(params.get("dilation", 1))
    if None in (kernel, stride, padding) or dilation != (1, 1) or params.get("ceil_mode", False) is not False \
            or params.get("return_indices", False) is not False:
        return None
    if min(*kernel, *stride) < 1 or not all(0 <= 2 * p <= k for p, k in zip(padding, kernel)):
        return None
    return kernel, stride, padding


def _ref_name(a: Any) -> str | None:
    return a["ref"] if isinstance(a, dict) and len(a) == 1 and isinstance(a.get("ref"), str) else None


def _file_refs(obj: Any):
    """Names that a node's undecoded arguments refer to."""
    if isinstance(obj, dict):
        if _ref_name(obj) is not None:
            yield obj["ref"]
        else:
            for v in obj.values():
                yield from _file_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _file_refs(v)


def _hardtanh_bounds(node: dict) -> tuple[float, float] | None:
    """(min_val, max_val) of an F.hardtanh call node on one tensor, else None."""
    if node.get("op") != "call" or (node.get("attrs") or {}).get("fn") != "F.hardtanh":
        return None
    args, kwargs = list(node.get("args") or []), dict(node.get("kwargs") or {})
    params = dict(zip(("min_val", "max_val", "inplace"), args[1:]))
    if len(args) > 4 or set(params) & set(kwargs) or set(kwargs) - {"min_val", "max_val", "inplace"}:
        return None
    params.update(kwargs)
    lo, hi = params.get("min_val", -1.0), params.get("max_val", 1.0)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not isinstance(params.get("inplace", False), bool):
        return None
    return float(lo), float(hi)


def _refs(obj: Any):
    if isinstance(obj, _Ref):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _refs(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _refs(o)
    elif isinstance(obj, slice):
        for o in (obj.start, obj.stop, obj.step):
            yield from _refs(o)


def _in_layout(v: Any, layout: torch.memory_format) -> Any:
    return v.contiguous(memory_format=layout) if isinstance(v, torch.Tensor) and v.dim() == 4 else v


def _caller(fn: Callable, args: list, kwargs: dict, in_model_layout: bool = False) -> Callable[[list, dict], Any]:
    if in_model_layout:  # a reduction: sum in the model's memory order, to round as it does
        def run_in_layout(env, ctx):
            a = [_in_layout(_materialize(v, env), ctx["layout"]) for v in args]
            return fn(*a, **_materialize(kwargs, env))
        return run_in_layout
    if all(isinstance(a, _Ref) for a in args) and not kwargs:
        slots = [a.slot for a in args]
        if len(slots) == 1:
            s0 = slots[0]
            return lambda env, ctx: fn(env[s0])
        if len(slots) == 2:
            s0, s1 = slots
            return lambda env, ctx: fn(env[s0], env[s1])
    dyn_args = [_has_ref(a) for a in args]
    dyn_kwargs = _has_ref(kwargs)

    def run(env, ctx):
        a = [_materialize(v, env) if d else v for v, d in zip(args, dyn_args)]
        k = _materialize(kwargs, env) if dyn_kwargs else kwargs
        return fn(*a, **k)
    return run


def _check_input(x: Any, channels: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DeployFormatError(f"binary conv {name!r} expects (N, {channels}, H, W) input, got {got}; "
                                "the file's graph is inconsistent, re-export the model")


def load(path: str | os.PathLike, *, threads: int | None = None, isa: str | None = None, fuse: bool = True) -> Runtime:
    """Load a .bnn file (see docs/deploy_format.md) as a callable network (arguments: Runtime)."""
    graph, tensors = read(path)
    return Runtime(graph, tensors, threads=threads, isa=isa, source=str(path), fuse=fuse)
