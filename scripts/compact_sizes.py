"""Sizes of plain and compact .bnn files of the ImageNet ResNet-18 (random weights; sizes do not
depend on the values) for every method that builds it, and of ReActNet's own ImageNet models,
against the float32 state_dict; and the compact file's logits against the plain file's on
random inputs (docs/deploy.md, "Compact files"):

    OMP_NUM_THREADS=1 python scripts/compact_sizes.py [--images 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch

import bnnkit
from bnnkit import deploy
from bnnkit.methods import get_method, list_methods


def models() -> list[tuple[str, str]]:
    """(model, method) pairs: resnet18_1w1a for each method that has binary weights to export,
    plus the ImageNet models of a method's own architecture (Method.bench_models)."""
    pairs = []
    for method in list_methods():
        cls = get_method(method)
        for name in ("resnet18_1w1a", *cls.bench_models.get("imagenet", ())):
            pairs.append((name, method))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4, help="random 224x224 inputs for the logits' change")
    p.add_argument("--methods", help="comma list (default: every registered method)")
    a = p.parse_args(argv)
    wanted = set(a.methods.split(",")) if a.methods else None
    print("| model | method | state_dict | .bnn | compact .bnn | .bnn ratio | compact ratio | int8 / float16 | logits' relative change |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, method in models():
            if wanted is not None and method not in wanted:
                continue
            torch.manual_seed(0)
            try:
                net = bnnkit.create_model(name, method=method, dataset="imagenet", **get_method(method).export_settings).eval()
                plain = deploy.export(net, os.path.join(tmp, "p.bnn"), example_input_shape=(1, 3, 224, 224))
            except Exception as e:  # a method without this model, or whose weights do not export
                print(f"| {name} | {method} | not exported: {str(e).splitlines()[0][:80]} |||||||")
                continue
            small = deploy.export(net, os.path.join(tmp, "c.bnn"), example_input_shape=(1, 3, 224, 224), compact=True)
            x = torch.randn(a.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            ref, out = deploy.load(os.path.join(tmp, "p.bnn"))(x), deploy.load(os.path.join(tmp, "c.bnn"))(x)
            state = plain["float32_params_bytes"]
            print(f"| {name} | {method} | {state} | {plain['bytes']} | {small['bytes']} | 1/{state / plain['bytes']:.1f} "
                  f"| 1/{state / small['bytes']:.1f} | {small['int8_tensors']} / {small['float16_tensors']} "
                  f"| {float((out - ref).norm() / ref.norm()):.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
