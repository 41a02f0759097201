"""Model summary in the manner of larq's `models.summary`: per layer and in total, binary and real
parameters, the deployed size, and binary and real multiply-accumulates for one input.

Conventions (the papers' and larq's): a binary weight costs 1 bit and a real value 32 bits; batch
norm counts its 4 values per channel (scale, shift, running mean and variance); the code SiMaN
keeps beside its weights and BiPer's unused beta are training state, not deployed. A multiply-
accumulate is binary when both its weight and its input are binary (an XNOR-popcount), real
otherwise (BiPer's 1w32a convs: binary weights on real inputs count as real). OPs = BOPs/64 + FLOPs
is the operation count the Bi-Real/ReActNet line of papers reports.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .._command import ArgumentParser, number
from ..nn.layers import BinaryConv2d

INPUT_SIZE = {"cifar": 32, "imagenet": 224}


@dataclass
class LayerStats:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    binary_params: int = 0
    real_params: int = 0
    binary_macs: int = 0
    real_macs: int = 0

    @property
    def bytes(self) -> float:
        return self.binary_params / 8 + self.real_params * 4


@dataclass
class Summary:
    layers: list[LayerStats] = field(default_factory=list)

    def total(self, attr: str) -> float:
        return sum(getattr(layer, attr) for layer in self.layers)

    @property
    def binary_params(self) -> int:
        return int(self.total("binary_params"))

    @property
    def real_params(self) -> int:
        return int(self.total("real_params"))

    @property
    def binary_macs(self) -> int:
        return int(self.total("binary_macs"))

    @property
    def real_macs(self) -> int:
        return int(self.total("real_macs"))

    @property
    def deployed_bytes(self) -> float:
        return self.total("bytes")

    @property
    def float32_bytes(self) -> int:
        return 4 * (self.binary_params + self.real_params)

    @property
    def ops(self) -> float:
        return self.binary_macs / 64 + self.real_macs

    def table(self) -> str:
        head = f"{'layer':<28} {'type':<14} {'output':<18} {'bin params':>11} {'real params':>11} {'bytes':>11} {'bin MACs':>14} {'real MACs':>13}"
        lines = [head, "-" * len(head)]
        for s in self.layers:
            shape = "x".join(map(str, s.output_shape))
            lines.append(f"{s.name:<28} {s.kind:<14} {shape:<18} {s.binary_params:>11,} {s.real_params:>11,} "
                         f"{s.bytes:>11,.0f} {s.binary_macs:>14,} {s.real_macs:>13,}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<62} {self.binary_params:>11,} {self.real_params:>11,} {self.deployed_bytes:>11,.0f} "
                     f"{self.binary_macs:>14,} {self.real_macs:>13,}")
        ratio = self.binary_macs / self.real_macs if self.real_macs else float("inf")
        lines += [
            f"deployed size: {self.deployed_bytes / 2**20:.2f} MiB (float32: {self.float32_bytes / 2**20:.2f} MiB, "
            f"{self.float32_bytes / self.deployed_bytes:.1f}x smaller)",
            f"binary MACs (BOPs): {self.binary_macs:,}   real MACs (FLOPs): {self.real_macs:,}   "
            f"binary/real: {ratio:.1f}   OPs = BOPs/64 + FLOPs: {self.ops:,.0f}",
        ]
        return "\n".join(lines)


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    return output[0].numel() * per_output


def _stats(name: str, module: nn.Module, output: torch.Tensor) -> LayerStats | None:
    shape = tuple(output.shape[1:])
    if isinstance(module, BinaryConv2d):
        macs = _conv_macs(module, output)
        real = 0 if module.alpha is None else module.alpha.numel()
        return LayerStats(name, "BinaryConv2d", shape, module.weight.numel(), real,
                          macs if module.binary_input else 0, 0 if module.binary_input else macs)
    if isinstance(module, nn.Conv2d):
        params = sum(p.numel() for p in module.parameters())
        return LayerStats(name, "Conv2d", shape, 0, params, 0, _conv_macs(module, output))
    if isinstance(module, nn.Linear):
        params = sum(p.numel() for p in module.parameters())
        return LayerStats(name, "Linear", shape, 0, params, 0, module.in_features * module.out_features)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return LayerStats(name, type(module).__name__, shape, 0, 4 * module.num_features)
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if params:
        return LayerStats(name, type(module).__name__, shape, 0, params)
    return None


def summarize(model: nn.Module, input_size: int | None = None) -> Summary:
    """Per-layer statistics of `model` for one input image (batch of 1), measured on a copy so
    that methods whose forward rewrites state (SiMaN, quirk Q1) leave `model` untouched."""
    probe = copy.deepcopy(model).eval()
    if input_size is None:
        input_size = INPUT_SIZE[getattr(model, "bnnkit_spec", {}).get("family", "cifar")]
    leaves = [(n, m) for n, m in probe.named_modules()
              if isinstance(m, (BinaryConv2d, nn.Conv2d, nn.Linear)) or not any(True for _ in m.children())]
    summary = Summary()
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: _record(summary, n, mod, out)) for n, m in leaves]
    try:
        with torch.no_grad():
            device = next(probe.parameters()).device
            probe(torch.randn(1, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return summary


def _record(summary: Summary, name: str, module: nn.Module, output: torch.Tensor) -> None:
    stats = _stats(name, module, output)
    if stats is not None:
        summary.layers.append(stats)


def main(argv: list[str] | None = None) -> int:
    from .. import create_model, list_methods
    from ..methods import DEFAULT_METHOD

    parser = ArgumentParser(prog="bnnkit summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a registered model name, e.g. resnet18_1w1a")
    parser.add_argument("--method", default=DEFAULT_METHOD, help=f"one of {', '.join(list_methods())}")
    parser.add_argument("--dataset", default=None, help="cifar10, cifar100, imagenet or tinyimagenet")
    parser.add_argument("--num_classes", type=number(int, 1), default=None)
    args = parser.parse_args(argv)
    model = create_model(args.model, method=args.method, dataset=args.dataset, num_classes=args.num_classes)
    spec = model.bnnkit_spec
    print(f"{args.model} ({args.method}, {spec['dataset']}, {spec['num_classes']} classes)")
    print(summarize(model).table())
    return 0
