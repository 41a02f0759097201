"""Seed corpus for libbnn's fuzzer (scripts/fuzz_libbnn.sh): small .bnn files exported by bnnkit
now, so that no binaries live in the repository. Published models at a small input size (their
graphs are what libbnn must run), a compact one, and a tiny net of the remaining node kinds.

    python runtime/fuzz/make_corpus.py DIR
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bnnkit
from bnnkit import deploy
from bnnkit.methods import get_method


class Tiny(nn.Module):
    """Real conv, binary convs, max pooling, cat, a strided slice,
    hardtanh, PReLU, BatchNorm1d, adaptive pooling, view and log_softmax in a few hundred weights."""

    def __init__(self) -> None:
        super().__init__()
        method = get_method("siman")("cifar")
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = method.conv(8, 8, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = method.conv(16, 8, 1, 2, 0)
        self.act = nn.PReLU(8)
        self.fc = nn.Linear(8, 4)
        self.bn_fc = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardtanh(self.bn0(self.conv0(x)))
        y = self.bn1(F.max_pool2d(self.conv1(x), 2, 1))[:, :, ::2, 1:]
        x = torch.cat([x[:, :, ::2, ::2], F.pad(y, (0, 1, 0, 0))[:, :, :, ::2]], 1)
        x = self.act(self.conv2(x))
        x = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return F.log_softmax(self.bn_fc(self.fc(x)), dim=1)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    small = (1, 3, 8, 8)
    models = {
        "resnet20_siman": (bnnkit.create_model("resnet20_1w1a", method="siman", dataset="cifar10"), small, False),
        "resnet20_biper": (bnnkit.create_model("resnet20_1w1a", method="biper", dataset="cifar10", stage=2), small, False),
        "resnet20_irnet": (bnnkit.create_model("resnet20_1w1a", method="irnet", dataset="cifar10"), small, False),
        "resnet20_1w32a_irnet": (bnnkit.create_model("resnet20_1w32a", method="irnet", dataset="cifar10"), small, True),
        "tiny": (Tiny(), (2, 3, 6, 6), False),
        "tiny_compact": (Tiny(), (1, 3, 8, 4), True),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (model, shape, compact) in models.items():
            model.eval()
            deploy.export(model, out / f"{name}.bnn", example_input_shape=shape, compact=compact)
    for f in sorted(out.iterdir()):
        print(f"seed {f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
