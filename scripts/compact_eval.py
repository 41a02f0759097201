"""Top-1 of a trained CIFAR-10 checkpoint exported as a plain and as a compact .bnn file, on the
CIFAR-10 test set (docs/deploy.md, "Compact files"):

    OMP_NUM_THREADS=1 python scripts/compact_eval.py CKPT [--data cifar10-jpeg.tar.gz] [--limit N] [--layers]

--layers also runs each real layer alone in int8 (the others float32), every real layer in int8 and
every one in float16, to show which layer the compact file's change comes from.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile

import numpy as np
import torch

from bnnkit import deploy
from bnnkit.data._info import CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD
from bnnkit.deploy._cli import load_model
from bnnkit.deploy._export import channel_error, compact_weights, dequantize_int8, int8_per_channel
from bnnkit.deploy._format import read, write


def cifar10_test(tarball: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (sorted by class and file name), normalised as bnnkit's CIFAR recipes do."""
    from PIL import Image
    found = {}
    with tarfile.open(tarball) as tf:
        for member in tf:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and parts[2] in CIFAR10_CLASSES and parts[3].endswith(".jpg"):
                found[(parts[2], parts[3])] = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
    keys = sorted(found)
    if limit:
        keys = [k for k in keys if int(k[1].split(".")[0]) < limit // 10]
    x = torch.from_numpy(np.stack([found[k] for k in keys])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor([CIFAR10_CLASSES.index(k[0]) for k in keys])


def logits(path: str, images: torch.Tensor) -> torch.Tensor:
    net = deploy.load(path)
    return torch.cat([net(chunk) for chunk in images.split(500)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz"))
    p.add_argument("--limit", type=int, help="the first limit/10 test images of each class (default: all 10,000)")
    p.add_argument("--layers", action="store_true", help="also each real layer alone in int8, and the stem's choice")
    a = p.parse_args(argv)
    images, labels = cifar10_test(a.data, a.limit)
    with tempfile.TemporaryDirectory() as tmp:
        plain, small = os.path.join(tmp, "plain.bnn"), os.path.join(tmp, "compact.bnn")
        net = load_model(a.checkpoint)
        info = deploy.export(net, plain, example_input_shape=(1, 3, 32, 32))
        cinfo = deploy.export(net, small, example_input_shape=(1, 3, 32, 32), compact=True)
        ref = logits(plain, images)
        top = ref.argmax(1)
        print(f"{a.checkpoint}: {len(labels)} test images")
        print(f"float32 .bnn {info['bytes']} bytes: top-1 {100 * float((top == labels).float().mean()):.2f} %")

        def report(what: str, path: str) -> None:
            out = logits(path, images)
            rel = float((out - ref).norm() / ref.norm())
            print(f"{what}: top-1 {100 * float((out.argmax(1) == labels).float().mean()):.2f} %, "
                  f"predictions equal on {100 * float((out.argmax(1) == top).float().mean()):.2f} %, "
                  f"logits' relative change {rel:.2e}")
        report(f"compact .bnn {cinfo['bytes']} bytes ({cinfo['int8_tensors']} int8, {cinfo['float16_tensors']} float16)", small)
        if a.layers:
            graph, tensors = read(plain)
            real = [n for n in graph["nodes"] if n["op"] in ("conv", "linear")]
            for node in real:
                w = tensors[node["tensors"]["weight"]]
                q, scale = int8_per_channel(w)
                print(f"  {node['name']} {tuple(w.shape)}: int8 worst channel error {channel_error(w, dequantize_int8(q, scale)):.4f}, "
                      f"float16 {channel_error(w, w.half()):.2e}")
                g, t = read(plain)
                compact_weights({"nodes": [n for n in g["nodes"] if n["name"] == node["name"]]}, t,
                                max_int8_error=1.0, stem_float16=False)
                write(small, g, t)
                report(f"  only {node['name']} int8", small)
            for what, options in (("every real layer int8", {"max_int8_error": 1.0, "stem_float16": False}),
                                  ("every real layer float16", {"max_int8_error": 0.0})):
                g, t = read(plain)
                compact_weights(g, t, **options)
                write(small, g, t)
                report(what, small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
