"""CIFAR ResNets: resnet20_1w1a, resnet20_bireal_1w1a (RBNN), resnet20_1w32a (BiPer, IR-Net) and
resnet18_1w1a with its A/B/C widths (REFERENCE.md §2.1-2.2, METHODS.md §1.2, §2.2, §3.2).

One builder a model; each publication's variant of it (activations, block form, shortcut, head,
init) is one row of the tables below, keyed by the method's `architecture`."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from . import register_model
from ._common import PadShortcut, activation, init_batchnorms, kaiming_normal_convs


@dataclass(frozen=True)
class ResNet20Variant:
    """How one publication builds its CIFAR ResNet-20.

    block: 'bireal' (a residual around each binary conv) or 'basic' (one residual per block);
    act: 'prelu' (SiMaN: ReLU stem, PReLU blocks), 'hardtanh' or 'relu' everywhere else;
    stem_act: False where the stem has no activation; shortcut: 'slice' (option A) or 'avg'
    (2x2 average pooling), both zero-padded; head_act: ReLU between the BatchNorm1d and the
    classifier; init_linear: kaiming_normal_ on the classifier too; bn_weight: every BatchNorm2d's
    initial weight (bias 0), None for PyTorch's default."""

    block: str
    act: str
    shortcut: str
    stem_act: bool = True
    head_act: bool = False
    init_linear: bool = False
    bn_weight: float | None = None


RESNET20 = {
    "siman": ResNet20Variant("bireal", "prelu", "slice", init_linear=True),
    "biper": ResNet20Variant("bireal", "hardtanh", "avg"),
    # htqin/IR-Net CIFAR-10/ResNet20/1w1a/resnet.py: Hardtanh, option A, kaiming on Linear too
    "irnet": ResNet20Variant("bireal", "hardtanh", "slice", init_linear=True),
    # lmbxmu/RBNN models_cifar/resnet.py: one residual per block; BatchNorm2d weights start at 1e-8
    "rbnn": ResNet20Variant("basic", "hardtanh", "slice", init_linear=True, bn_weight=1e-8),
}
RESNET20_BIREAL = {  # lmbxmu/RBNN models_cifar/resnet_bireal.py
    "rbnn": ResNet20Variant("bireal", "hardtanh", "slice", init_linear=True, bn_weight=1e-8),
}
RESNET20_1W32A = {  # real activations
    "biper": ResNet20Variant("bireal", "relu", "avg"),  # BiPer's ResNet_32a: ReLU everywhere
    # htqin/IR-Net CIFAR-10/ResNet20/1w32a/resnet.py: no stem activation, ReLU after the BatchNorm1d
    "irnet": ResNet20Variant("basic", "relu", "slice", stem_act=False, head_act=True, init_linear=True),
}


def _act(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return activation("siman" if kind == "prelu" else "hardtanh", channels)


class BiRealBlock(nn.Module):
    """A residual around each binary conv: y1 = BN1(conv1(x)) + S(x); z = act1(y1);
    y2 = BN2(conv2(z)) + z; out = act2(y2)."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, v: ResNet20Variant,
                 binary_input: bool) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1, binary_input=binary_input)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = _act(v.act, planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1, binary_input=binary_input)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = _act(v.act, planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4, v.shortcut)

    def forward(self, x: Tensor) -> Tensor:
        z = conv_bn(self.conv1, self.bn1, x, self.shortcut(x), self.nonlinear1)
        return conv_bn(self.conv2, self.bn2, z, z, self.nonlinear2)


class BasicBlock20(nn.Module):
    """One residual per block: z = act1(BN1(conv1(x))); out = act2(BN2(conv2(z)) + S(x))."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, v: ResNet20Variant,
                 binary_input: bool) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1, binary_input=binary_input)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = _act(v.act, planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1, binary_input=binary_input)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = _act(v.act, planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4, v.shortcut)

    def forward(self, x: Tensor) -> Tensor:
        z = conv_bn(self.conv1, self.bn1, x, nonlinearity=self.nonlinear1)
        return conv_bn(self.conv2, self.bn2, z, self.shortcut(x), self.nonlinear2)


class ResNet20(nn.Module):
    def __init__(self, method: Method, num_classes: int, v: ResNet20Variant, binary_input: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        if v.stem_act:
            self.nonlinear = _act("relu" if v.act == "prelu" else v.act, 16)
        block = BiRealBlock if v.block == "bireal" else BasicBlock20
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(3):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(block(method, in_planes, planes, stride, v, binary_input))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm1d(64)
        self.head_relu = v.head_act
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        if hasattr(self, "nonlinear"):
            out = self.nonlinear(out)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3)).flatten(1)
        out = self.bn2(out)
        return self.linear(F.relu(out) if self.head_relu else out)


def _resnet20(method: Method, num_classes: int, variants: dict[str, ResNet20Variant],
              binary_input: bool = True) -> nn.Module:
    v = variants[method.architecture]
    model = ResNet20(method, num_classes, v, binary_input)
    if v.bn_weight is not None:  # the authors' init loop sets BatchNorm2d and draws conv/linear in one walk
        init_batchnorms(model, v.bn_weight)
    kaiming_normal_convs(model, linear=v.init_linear)
    return model


@register_model("cifar", architectures=tuple(RESNET20))
def resnet20_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet20(method, num_classes, RESNET20)


@register_model("cifar", architectures=tuple(RESNET20_BIREAL))
def resnet20_bireal_1w1a(method: Method, num_classes: int) -> nn.Module:
    """RBNN's Bi-Real ResNet-20: a residual around each binary conv, option-A shortcuts."""
    return _resnet20(method, num_classes, RESNET20_BIREAL)


@register_model("cifar", architectures=tuple(RESNET20_1W32A))
def resnet20_1w32a(method: Method, num_classes: int) -> nn.Module:
    """Binary weights, real activations (BiPer's ResNet_32a; IR-Net's ResNet20/1w32a)."""
    return _resnet20(method, num_classes, RESNET20_1W32A, binary_input=False)


@dataclass(frozen=True)
class ResNet18Variant:
    """How one publication builds its CIFAR ResNet-18s: shortcut 'binary' (a binary 1x1 conv + BN),
    'real' (a real 1x1 conv + BN) or 'avg' (2x2 average pooling + zero pad); init 'kaiming'
    (kaiming_normal_ on every Conv2d) or None (PyTorch's defaults); log_softmax: the model ends in
    log_softmax, so its outputs are log-probabilities (cross-entropy on them equals it on logits)."""

    shortcut: str
    init: str | None = None
    log_softmax: bool = False


RESNET18 = {
    "siman": ResNet18Variant("binary"),
    "biper": ResNet18Variant("avg", init="kaiming"),
    "rbnn": ResNet18Variant("binary"),  # lmbxmu/RBNN models_cifar/resnet2.py, which SiMaN kept
}
# htqin/IR-Net CIFAR-10/ResNet18/resnet.py (ResNet18 only): real 1x1 shortcut, LogSoftmax
RESNET18_IRNET = {**RESNET18, "irnet": ResNet18Variant("real", log_softmax=True)}


class BasicBlock(nn.Module):
    """z = Hardtanh(BN1(conv1(x))); out = Hardtanh(BN2(conv2(z)) + S(x)); one residual per block."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, v: ResNet18Variant) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if v.shortcut == "binary":
                self.shortcut = nn.Sequential(method.conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))
            elif v.shortcut == "real":
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            else:
                self.shortcut = PadShortcut(planes // 4 if planes != in_planes else 0, "avg")

    def forward(self, x: Tensor) -> Tensor:
        z = conv_bn(self.conv1, self.bn1, x, nonlinearity=F.hardtanh)
        return conv_bn(self.conv2, self.bn2, z, self.shortcut(x), F.hardtanh)


class ResNet18(nn.Module):
    def __init__(self, method: Method, num_classes: int, widths: tuple[int, int, int, int], v: ResNet18Variant) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(method, in_planes, planes, stride, v), BasicBlock(method, planes, planes, 1, v)]
            in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[3], num_classes)  # registered before bn2, as published
        self.bn2 = nn.BatchNorm1d(widths[3])
        self.log_softmax = v.log_softmax

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))  # no activation in the stem
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        out = self.linear(self.bn2(out))
        return F.log_softmax(out, dim=1) if self.log_softmax else out


def _resnet18(method: Method, num_classes: int, widths: tuple[int, int, int, int],
              variants: dict[str, ResNet18Variant] = RESNET18) -> nn.Module:
    v = variants[method.architecture]
    model = ResNet18(method, num_classes, widths, v)
    if v.init == "kaiming":
        kaiming_normal_convs(model)
    return model


@register_model("cifar", architectures=tuple(RESNET18_IRNET))
def resnet18_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (64, 128, 256, 512), RESNET18_IRNET)


@register_model("cifar", architectures=tuple(RESNET18))
def resnet18A_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (32, 32, 64, 128))


@register_model("cifar", architectures=tuple(RESNET18))
def resnet18B_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (32, 64, 128, 256))


@register_model("cifar", architectures=tuple(RESNET18))
def resnet18C_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (64, 64, 128, 256))
