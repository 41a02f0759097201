"""Binarization methods as plug-ins.

A method decides, for every binary convolution of a model, its weight quantizer, its input
quantizer and its scale; which published variant of each model it uses (`architecture`); the
settings a training schedule changes (`schedule`) and any regulariser added to the loss. Adding a
method is one new file in this folder that subclasses `Method` and registers it.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..nn.layers import BinaryConv2d, binary_convs

METHODS: Registry[type["Method"]] = Registry("method")


class Method:
    """A binarization method, configured for one model family ('cifar' or 'imagenet')."""

    name: ClassVar[str]
    # Which published variant of each model to build: 'siman' or 'biper' (activations, shortcuts, init).
    architecture: ClassVar[str] = "biper"
    # Settings with their defaults; create_model(**settings) and configure() accept these names.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, family: str = "cifar", **settings: Any) -> None:
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise TypeError(f"method {self.name!r} has no setting {', '.join(sorted(unknown))}; "
                            f"its settings: {', '.join(self.defaults) or 'none'}")
        self.family = family
        self.settings = {**self.defaults, **settings}

    # --- how each binary conv is made -------------------------------------------------------
    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter | None:
        return None

    def make_weight_quantizer(self, conv: BinaryConv2d) -> nn.Module:
        raise NotImplementedError

    def make_input_quantizer(self, conv: BinaryConv2d) -> nn.Module:
        raise NotImplementedError

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
             padding: int = 0, groups: int = 1, binary_input: bool = True) -> BinaryConv2d:
        return BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                            method=self, binary_input=binary_input)

    # --- training-time behaviour ----------------------------------------------------------
    def regularizer(self, model: nn.Module) -> Tensor:
        """Added to the task loss in training (and, where the authors did so, in validation)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def schedule(self, epoch: int, epochs: int, **hparams: Any) -> dict[str, Any]:
        """The settings in force during `epoch` (0-based) of `epochs`; {} if nothing changes."""
        return {}

    def on_stage_start(self, model: nn.Module) -> None:
        """Called once when a later training stage starts from an earlier stage's weights."""


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def configure(model: nn.Module, **settings: Any) -> None:
    """Set method settings (e.g. percent=7.5, tau=0.037, stage=2) on every binary conv of `model`.

    A setting unknown to every quantizer of the model is an error. Quantizers that the published
    schedule leaves alone (BiPer's 1w32a convs keep tau = 1, quirk Q12) ignore scheduled values."""
    convs = binary_convs(model)
    if not convs:
        raise ValueError("configure: the model has no binary convolutions")
    used: set[str] = set()
    for _, conv in convs:
        for q in (conv.weight_quantizer, conv.input_quantizer):
            mine = {k: v for k, v in settings.items() if k in getattr(q, "settings", ())}
            if mine:
                q.configure(**mine)
                used |= mine.keys()
    unknown = set(settings) - used
    if unknown:
        raise TypeError(f"configure: no binary layer of this model has setting(s) {', '.join(sorted(unknown))}")
    spec = getattr(model, "bnnkit_spec", None)
    if spec is not None:
        spec["settings"].update(settings)


def regularizer(model: nn.Module) -> Tensor:
    """The model's method regulariser (zero for methods without one)."""
    return method_of(model).regularizer(model)


def method_of(model: nn.Module) -> Method:
    spec = getattr(model, "bnnkit_spec", None)
    if spec is None:
        raise ValueError("this model was not built by bnnkit.create_model, so its method is unknown")
    return get_method(spec["method"])(spec["family"], **spec["settings"])


# Importing the method files registers them.
from . import biper, siman, ste, xnor  # noqa: E402,F401
