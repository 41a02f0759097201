"""The authors' per-image torchvision pipelines (spec section 6), one function per dataset family."""
from __future__ import annotations

from torchvision import transforms as T

from ._info import DATASETS
from ._lighting import Lighting

# RandomResizedCrop's scale goes up to 1.25 in both papers' ImageNet loaders (not torchvision's 1.0).
IMAGENET_SCALE = (0.08, 1.25)
IMAGENET_RATIO = (3 / 4, 4 / 3)


def cifar_transform(name: str, train: bool) -> T.Compose:
    info = DATASETS[name]
    aug = [T.RandomCrop(32, padding=4, fill=0), T.RandomHorizontalFlip(0.5)] if train else []
    return T.Compose(aug + [T.ToTensor(), T.Normalize(info.mean, info.std)])


def imagenet_transform(train: bool, lighting: bool = False) -> T.Compose:
    info = DATASETS["imagenet"]
    if train:
        aug = [T.RandomResizedCrop(224, scale=IMAGENET_SCALE, ratio=IMAGENET_RATIO,
                                   interpolation=T.InterpolationMode.BILINEAR)]
        aug += [Lighting(0.1)] if lighting else []  # BiPer only, before the flip as in its loader
        aug += [T.RandomHorizontalFlip(0.5)]
    else:
        aug = [T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224)]
    return T.Compose(aug + [T.ToTensor(), T.Normalize(info.mean, info.std)])


def tinyimagenet_transform(train: bool) -> T.Compose:
    info = DATASETS["tinyimagenet"]
    aug = [T.Resize(224)] + ([T.RandomRotation(20), T.RandomHorizontalFlip(0.5)] if train else [])
    return T.Compose(aug + [T.ToTensor(), T.Normalize(info.mean, info.std)])


def build_transform(name: str, train: bool, lighting: bool = False) -> T.Compose:
    if name in ("cifar10", "cifar100"):
        return cifar_transform(name, train)
    if name == "imagenet":
        return imagenet_transform(train, lighting)
    return tinyimagenet_transform(train)
