"""Run an author's own CIFAR training script on this CPU, on the same pixels bnnkit trains on.

The training-parity runs of docs/training.md compare bnnkit with the published code on one schedule.
This driver runs the authors' script unchanged from a checkout outside this repository (their code
is never copied here) and changes only what a CPU-only machine without their data needs:

- `.cuda()` on tensors and modules is an identity and `.type("torch.cuda.FloatTensor")` the CPU type, so
  their GPU branch (which is also where their scripts call their seed function) runs on the CPU;
- `torchvision.datasets.CIFAR10` reads the split through bnnkit's reader (the JPEG archive in
  ../shared/data, optionally the same class-balanced subset as `bnnkit train --subset N`) and hands
  their transforms the same PIL images torchvision's class would;
- `--seed` seeds torch, numpy and random before their script starts, where it seeds no torch RNG;
- PyTorch 0.x spellings in IR-Net's trainer are compiled as today's (`.cuda(async=True)` as
  `non_blocking=True`, `loss.data[0]` and `prec1[0]` of 0-dim tensors as `.item()`) and
  `correct[:k].view(-1)` in ReCU's and RBNN's accuracy as `.reshape(-1)` (a non-contiguous view
  that PyTorch >= 1.5 refuses); nothing else in their text changes.

Usage (everything after `--` goes to their script as its own flags):

    python scripts/parity/authors_cifar.py --code ../parity/src/edmav4+BiPer/cifar10 \\
        --data_path ../shared/data/cifar10-jpeg.tar.gz --threads 2 [--subset 10000] \\
        -- --model resnet20_1w1a --epochs 3 --lr 0.021 ... --seed 1
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import os
import random
import sys

import numpy as np

import torch
import torch.nn as nn
import torchvision


# Their old PyTorch 0.x spellings that no longer parse or run, and today's equivalent.
_PYTHON3_SPELLINGS = {"async=True": "non_blocking=True", "loss.data[0]": "loss.item()",
                      "prec1[0]": "prec1.item()", "correct[:k].view(-1)": "correct[:k].reshape(-1)"}


def _respelled(source: str) -> str:
    for old, new in _PYTHON3_SPELLINGS.items():
        source = source.replace(old, new)
    return source


class _RespellingLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):
        return compile(_respelled(importlib.util.decode_source(data)), path, "exec", dont_inherit=True)


class _TheirModules(importlib.abc.MetaPathFinder):
    """Loads the modules of their folder (their utils/, modules/, ...) through _respelled."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not (spec.origin or "").startswith(self.folder + os.sep) \
                or not spec.origin.endswith(".py"):
            return spec
        loader = _RespellingLoader(name, spec.origin)
        return importlib.util.spec_from_file_location(name, spec.origin, loader=loader,
                                                      submodule_search_locations=spec.submodule_search_locations)


def _cpu_only() -> None:
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    module_type = nn.Module.type

    def type_on_cpu(self: nn.Module, dst_type):  # their scripts call model.type(args.type)
        return self if "cuda" in str(dst_type) else module_type(self, dst_type)

    nn.Module.type = type_on_cpu
    tensor_type = torch.Tensor.type

    def tensor_type_on_cpu(self: torch.Tensor, dst_type=None, *args, **kwargs):  # inputs.type(args.type)
        if isinstance(dst_type, str):
            dst_type = dst_type.replace("torch.cuda.", "torch.")
        return tensor_type(self, dst_type, *args, **kwargs)

    torch.Tensor.type = tensor_type_on_cpu


def _cifar_from(data_path: str, subset: int | None) -> type:
    from bnnkit.data import read_source

    class Cifar10FromBnnkit(torch.utils.data.Dataset):
        """torchvision.datasets.CIFAR10's interface over bnnkit's reading of the same split."""

        def __init__(self, root=None, train=True, transform=None, target_transform=None, download=False):
            self.source = read_source("cifar10", data_path, "train" if train else "val",
                                      subset=subset if train else None)
            self.transform, self.target_transform = transform, target_transform
            self.targets = [int(y) for y in self.source.labels]
            self.classes = list(self.source.classes)

        def __len__(self) -> int:
            return len(self.source)

        def __getitem__(self, i: int):
            image, target = self.source.load(i), self.targets[i]
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target

    return Cifar10FromBnnkit


def main() -> None:
    if "--" not in sys.argv:
        sys.exit("error: give the authors' flags after `--` (see this file's docstring)")
    split = sys.argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", required=True, help="the authors' folder holding the script")
    p.add_argument("--script", default="main.py", help="their training script in that folder")
    p.add_argument("--data_path", required=True, help="CIFAR-10 as bnnkit reads it (folder or archive)")
    p.add_argument("--subset", type=int, help="the class-balanced training subset of `bnnkit train --subset`")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, help="seed torch, numpy and random first: for scripts that seed "
                   "no torch RNG themselves (RBNN's main.py, IR-Net's trainer.py)")
    ours, theirs = p.parse_args(sys.argv[1:split]), sys.argv[split + 1:]

    torch.set_num_threads(ours.threads)
    if ours.seed is not None:
        random.seed(ours.seed)
        np.random.seed(ours.seed)
        torch.manual_seed(ours.seed)
    _cpu_only()
    torchvision.datasets.CIFAR10 = _cifar_from(os.path.abspath(ours.data_path), ours.subset)

    code = os.path.abspath(ours.code)
    script = os.path.join(code, ours.script)
    with open(script) as f:
        source = _respelled(f.read())
    sys.meta_path.insert(0, _TheirModules(code))
    os.chdir(code)  # their scripts import their own packages and write relative paths
    sys.path.insert(0, code)
    sys.argv = [script, *theirs]
    exec(compile(source, script, "exec"), {"__name__": "__main__", "__file__": script})


if __name__ == "__main__":
    main()
