"""One training step of BiPer stage 1, the authors' code against bnnkit's, from the same weights.

Where the 3-epoch runs of docs/training.md differ, this says whether the step itself differs: it
builds the authors' ResNet-20 (their checkout, outside this repository), loads its initial weights
into bnnkit with `load_reference`, runs both on the same batch of CIFAR-10 training images with the
authors' loss (cross entropy + tau * mean(sin^2(freq * w)) per binary conv) and their SGD, and
prints the loss, the largest gradient difference and the weights after the step, in units in the
last place (ulp) of float32 at each tensor's scale. `--twin perturbed` puts the authors' model next
to itself with every conv weight one float32 step up instead: how much rounding alone moves it.

    python scripts/parity/one_step.py --code ../parity/src/edmav4+BiPer/cifar10 \\
        --data_path ../shared/data/cifar10-jpeg.tar.gz [--seed 1] [--steps 3] [--twin perturbed]
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_cifar import _cpu_only, _TheirModules  # noqa: E402

import bnnkit  # noqa: E402
from bnnkit.compat import load_reference, reference_names  # noqa: E402
from bnnkit.data import read_source  # noqa: E402
from bnnkit.train._optim import build_optimizer  # noqa: E402


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| in units of the float32 step at the tensor's largest magnitude (0: identical).

    Measured against the tensor's scale, not each element's: a gradient of 1e-30 against -1e-30 is
    rounding noise of a sum whose terms are ~1e-3, not 2e9 steps apart."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(b.abs().max()), 1e-38)
    return float((a - b).abs().max()) / (scale * 2.0 ** -23)


def worst(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    name, d = max(((n, ulps(x, y)) for n, (x, y) in pairs.items()), key=lambda t: t[1])
    return f"at most {d:.1f} ulp apart ({name})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", required=True, help="BiPer's cifar10/ folder")
    p.add_argument("--data_path", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.021)
    p.add_argument("--weight_decay", type=float, default=0.0016)
    p.add_argument("--freq", type=float, default=20.0)
    p.add_argument("--tau", type=float, default=0.037)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--twin", choices=("bnnkit", "perturbed"), default="bnnkit",
                   help="what runs beside the authors' model: bnnkit's, or theirs with every conv weight "
                        "one float32 step up (how far rounding alone moves their own training)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _cpu_only()
    code = os.path.abspath(a.code)
    sys.meta_path.insert(0, _TheirModules(code))
    sys.path.insert(0, code)
    sys.argv = [sys.argv[0], "--freq", str(a.freq), "--tau", str(a.tau)]  # their modules parse argv on import
    import models_cifar  # their package

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    theirs = models_cifar.resnet20_1w1a(num_classes=10)
    for m in theirs.modules():  # their main.py sets tau on every binary conv before epoch 0
        if "Binarize" in m._get_name():
            m.tau = torch.tensor([a.tau]).float()
    theirs_params = dict(theirs.named_parameters())
    ce = nn.CrossEntropyLoss()

    def their_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = ce(net(x), y)
        for m in net.modules():
            if "Binarize" in m._get_name():
                loss = loss + m.tau.item() * torch.mean(0.5 - 0.5 * torch.cos(2 * m.freq * m.weight))
        return loss

    def their_sgd(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD([{"params": net.parameters(), "initial_lr": a.lr}], lr=a.lr, momentum=0.9,
                               weight_decay=a.weight_decay)

    if a.twin == "bnnkit":
        twin = load_reference(theirs.state_dict(), method="biper", model="resnet20_1w1a", num_classes=10,
                              freq=a.freq, stage=1, tau=a.tau)
        names = reference_names(twin)
        twin_loss = lambda net, x, y: ce(net(x), y) + bnnkit.regularizer(net)  # noqa: E731
        twin_opt = build_optimizer(twin, {"weight_decay": a.weight_decay, "lr": a.lr, "momentum": 0.9,
                                          "optimizer": "sgd"})
    else:  # their code against itself, every conv weight one float32 step up: the rounding's own effect
        twin, names, twin_loss = copy.deepcopy(theirs), {}, their_loss
        with torch.no_grad():
            for n, p in twin.named_parameters():
                if n.endswith("conv1.weight") or n.endswith("conv2.weight"):
                    p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
        twin_opt = their_sgd(twin)
    sgd = their_sgd(theirs)

    src = read_source("cifar10", a.data_path, "train")
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406],
                                                                           [0.229, 0.224, 0.225])])
    theirs.train(), twin.train()
    for step in range(a.steps):
        idx = list(range(step * a.batch, (step + 1) * a.batch))
        x = torch.stack([norm(src.load(i)) for i in idx])
        y = torch.as_tensor(src.labels[idx])
        loss_t, loss_o = their_loss(theirs, x, y), twin_loss(twin, x, y)
        sgd.zero_grad(), twin_opt.zero_grad()
        loss_t.backward(), loss_o.backward()
        # alpha multiplies a conv that a training-mode BatchNorm then normalises per channel, so its
        # gradient is zero up to BN's eps: both sides hold rounding residue there, compared apart
        grads = {n: (p.grad, theirs_params[names.get(n, n)].grad) for n, p in twin.named_parameters()
                 if p.grad is not None and not n.endswith("alpha")}
        alphas = max(float((p.grad - theirs_params[names.get(n, n)].grad).abs().max())
                     for n, p in twin.named_parameters() if n.endswith("alpha"))
        sgd.step(), twin_opt.step()
        weights = {n: (p, theirs_params[names.get(n, n)]) for n, p in twin.named_parameters()}
        print(f"step {step}: loss authors {loss_t.item():.7f} {a.twin} {loss_o.item():.7f} "
              f"(|diff| {abs(loss_t.item() - loss_o.item()):.2e}) | gradients {worst(grads)}, "
              f"alpha's at most {alphas:.1e} apart | weights after the step {worst(weights)}", flush=True)

if __name__ == "__main__":
    main()
