"""Models, registered by decorating small builder functions (as timm does).

    model = bnnkit.create_model("resnet20_1w1a", method="siman", num_classes=10, percent=7.5)

A builder receives the configured `Method` and the number of classes and builds the published
variant the method's `architecture` names ('siman', 'biper', 'irnet', 'rbnn': activations, blocks,
shortcuts, heads and init differ, REFERENCE.md §2.7, METHODS.md §1.2, §2.2, §3.2; ReCU's models
are BiPer's, which forked them). The same name can exist for CIFAR and for ImageNet (resnet18_1w1a):
`dataset` picks the family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .._registry import Registry, UnknownNameError
from ..methods import Method, get_method

FAMILIES = {"cifar10": "cifar", "cifar100": "cifar", "imagenet": "imagenet", "tinyimagenet": "imagenet"}
DEFAULT_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "tinyimagenet": 200}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[[Method, int], nn.Module]
    architectures: tuple[str, ...]


_MODELS: dict[str, dict[str, ModelEntry]] = {}  # name -> family -> entry


def register_model(family: str, architectures: tuple[str, ...] = ("siman", "biper")):
    """Register `builder(method, num_classes) -> nn.Module` under its function name."""

    def add(builder: Callable[[Method, int], nn.Module]):
        entries = _MODELS.setdefault(builder.__name__, {})
        if family in entries:
            raise ValueError(f"model {builder.__name__!r} is registered twice for {family}")
        entries[family] = ModelEntry(builder.__name__, family, builder, architectures)
        return builder

    return add


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, fams in _MODELS.items() if family is None or family in fams)


def model_entry(name: str, dataset: str | None = None) -> ModelEntry:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    fams = _MODELS[name]
    if dataset is None:
        family = "cifar" if "cifar" in fams else next(iter(fams))
    else:
        if dataset not in FAMILIES:
            raise UnknownNameError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(FAMILIES)}")
        family = FAMILIES[dataset]
    if family not in fams:
        raise UnknownNameError(f"model {name!r} exists for {', '.join(sorted(fams))}, not for dataset {dataset!r}")
    return fams[family]


def create_model(name: str, method: str = "siman", dataset: str | None = None,
                 num_classes: int | None = None, **settings: Any) -> nn.Module:
    """Build a registered model with the binary convolutions of `method`.

    `dataset` (cifar10, cifar100, imagenet, tinyimagenet) picks the CIFAR or ImageNet model when a
    name has both and sets the default number of classes; `settings` are the method's (SiMaN:
    percent, sort; BiPer: freq, stage, tau). The model carries `bnnkit_spec`, everything needed
    to build it again."""
    entry = model_entry(name, dataset)
    method_cls = get_method(method)
    if method_cls.architecture not in entry.architectures:
        raise UnknownNameError(f"model {name!r} is published only for architecture(s) {', '.join(entry.architectures)}; "
                               f"method {method!r} builds the {method_cls.architecture} variant")
    dataset = dataset or ("cifar10" if entry.family == "cifar" else "imagenet")
    num_classes = num_classes or DEFAULT_CLASSES[dataset]
    configured = method_cls(entry.family, **settings)
    model = entry.builder(configured, num_classes)
    configured.prepare(model)
    model.bnnkit_spec = {"model": name, "method": method, "dataset": dataset, "family": entry.family,
                         "num_classes": num_classes, "settings": dict(configured.settings)}
    return model


from . import cifar_resnet, imagenet_resnet, mobilenet, reactnet, vgg  # noqa: E402,F401  (registers the models)
