"""Binarization methods as plug-ins: everything the rest of bnnkit needs to know of a method.

A method decides, for every binary convolution of a model, its weight quantizer, its input
quantizer and its scale; which published variant of each model it uses (`architecture`); its
training options with the authors' flag names (`options`: the CLI and the config are generated
from them), the authors' script defaults, its per-epoch schedule, its training stages, its
optimiser's parameter groups, its data augmentation and any regulariser added to the loss. The
trainer, the CLI, checkpoints, export and bench ask these declarations and never compare a
method's name. Adding a method is one new file in this folder that subclasses `Method` and
registers it (docs/adding_a_method.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..errors import ConfigError
from ..nn.layers import BinaryConv2d, binary_convs

METHODS: Registry[type["Method"]] = Registry("method")
DEFAULT_METHOD = "siman"  # what `bnnkit train` and `bnnkit summary` use without --method


@dataclass(frozen=True)
class Option:
    """One training option of a method: a config key, a `bnnkit train --NAME` flag and a recipe key.

    `default` is the authors' script default (None: the method's own default, or unset). An option
    feeds the model setting of the same name (create_model(**settings)) unless `hparam`, which
    makes it a hyper-parameter of `Method.schedule` instead. `parse` turns the flag's value into
    the setting (the authors' flags sometimes mean something else than their value). `inherited`:
    a stage that starts from a checkpoint takes it from there (a value given that differs is an
    error). `scheduled`: the schedule changes it epoch by epoch, so a resumed run does not compare
    it. `rebuilds`: needed to rebuild an authors' checkpoint, so `eval`, `qe` and `export` take
    it as a flag too. `per_stage`: it tells a recipe's stages apart (BiPer's stage), so a flag
    typed on the command line does not override what each stage of a multi-stage recipe sets."""

    name: str
    type: type
    default: Any
    help: str
    hparam: bool = False
    parse: Callable[[Any], Any] | None = None
    inherited: bool = False
    scheduled: bool = False
    rebuilds: bool = False
    per_stage: bool = False
    choices: tuple[Any, ...] | None = None
    label: str = ""  # what messages call it ('frequency'); the name where empty
    low: float | None = None  # the smallest valid value of a number (above: exclusive)
    above: bool = False
    high: float | None = None  # the largest

    def setting(self, value: Any) -> Any:
        return self.parse(value) if self.parse is not None else value

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of this option (None: nothing): a non-finite number, a
        value outside its choices or its range."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"--{self.name} {value!r}: takes {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return f"--{self.name} must be a finite number, not {value}"
            if self.low is not None and (value <= self.low if self.above else value < self.low):
                return f"--{self.name} must be {'above' if self.above else 'at least'} {self.low:g}, not {value}"
            if self.high is not None and value > self.high:
                return f"--{self.name} must be at most {self.high:g}, not {value}"
        return None


class Method:
    """A binarization method, configured for one model family ('cifar' or 'imagenet').

    Class-level declarations (read without building a model) come first; then how each binary conv
    is made; then what training asks of a configured method."""

    name: ClassVar[str]
    title: ClassVar[str] = ""  # as papers write it, for messages
    year: ClassVar[int] = 0  # of publication: tables list methods in the order the field made them
    # Which published variant of each model to build: 'siman', 'biper', 'irnet' or 'rbnn' (activations,
    # blocks, shortcuts, heads, init; bnnkit.models).
    architecture: ClassVar[str] = "biper"
    # Settings with their defaults; create_model(**settings) and configure() accept these names.
    defaults: ClassVar[dict[str, Any]] = {}
    # Training options (config keys and flags); see Option.
    options: ClassVar[tuple[Option, ...]] = ()
    # Other names the authors' scripts use for config keys: {'load_ckpt_stage1': 'start_from'}.
    aliases: ClassVar[dict[str, str]] = {}
    # The authors' flags that stand for fixed values of options: {'stage2': {'stage': 2}}.
    const_flags: ClassVar[dict[str, dict[str, Any]]] = {}
    # Settings under which a model of this method has binary weights to export (BiPer: stage 2).
    export_settings: ClassVar[dict[str, Any]] = {}
    # `bnnkit bench --methods` cases: label -> settings (BiPer: 'biper1' stage 1, 'biper2' stage 2);
    # default {name: {}}; {} for a method without a published recipe to time.
    bench_cases: ClassVar[dict[str, dict[str, Any]]] = {}
    # Models of this method's own architecture that `bnnkit bench` times by default, per model
    # family ("cifar", "imagenet"), beside the ResNets and VGG-small every seed method published.
    bench_models: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Numeric settings `bnnkit bench` takes as flags: name -> (low, high, help); [low, high).
    bench_settings: ClassVar[dict[str, tuple[float, float, str]]] = {}
    # Whether validation adds the regulariser to its loss, as the authors' validate() does (Q9).
    regularizer_in_validation: ClassVar[bool] = False
    # Whether the authors step their LR scheduler at the start of each epoch, before its first batch
    # (ReActNet's LambdaLR, so epoch e trains with the factor of step e + 1), not at its end.
    lr_steps_first: ClassVar[bool] = False
    # Whether the decayed parameter group comes first in the optimiser (param_group_rule's groups).
    decayed_group_first: ClassVar[bool] = True

    @classmethod
    def display(cls) -> str:
        return cls.title or cls.name

    @classmethod
    def script_defaults(cls, family: str) -> dict[str, Any]:
        """The authors' per-script defaults for this family that differ from the trainer's
        (REFERENCE.md §8): epochs, batch sizes, weight decay, model, the method's own options."""
        return {}

    @classmethod
    def model_settings(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """create_model's settings from a resolved config: every non-hparam option that is set."""
        return {o.name: o.setting(cfg[o.name]) for o in cls.options
                if not o.hparam and cfg.get(o.name) is not None}

    @classmethod
    def schedule_hparams(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of `schedule` from a resolved config: every hparam option that is set."""
        return {o.name: cfg[o.name] for o in cls.options if o.hparam and cfg.get(o.name) is not None}

    @classmethod
    def validate_config(cls, cfg: dict[str, Any]) -> None:
        """Raise ConfigError for a resolved config this method cannot train (contradictory options)."""
        for o in cls.options:
            if o.choices is not None and cfg.get(o.name) is not None and cfg[o.name] not in o.choices:
                raise ConfigError(f"--{o.name} {cfg[o.name]!r}: {cls.display()} takes "
                                  f"{', '.join(map(str, o.choices))}")
            problem = o.problem(cfg.get(o.name))
            if problem is not None:
                raise ConfigError(f"{problem} ({cls.display()})")

    @classmethod
    def param_group_rule(cls, family: str, model_name: str) -> Callable[[str], bool] | None:
        """The authors' weight-decay rule: decayed(their parameter name) -> bool, the decayed group
        first; None for one group in which every parameter is decayed."""
        return None

    @classmethod
    def augmentation(cls, dataset: str, backend: str) -> dict[str, Any]:
        """Keyword arguments for the training loader beyond the dataset's standard pipeline
        (BiPer's ImageNet recipes add Lighting: {'lighting': True})."""
        return {}

    @classmethod
    def authors_settings(cls, path: str, given: dict[str, Any]) -> dict[str, Any]:
        """create_model's settings for an authors' checkpoint at `path` (which records none), from
        the `rebuilds` options given on the command line (`given`, None where not given)."""
        return {k: v for k, v in given.items() if v is not None}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "bench_cases" not in cls.__dict__ and "name" in cls.__dict__:
            cls.bench_cases = {cls.name: {}}

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

    def prepare(self, model: nn.Module) -> None:
        """Called by create_model once the model is built: choices that depend on where a binary
        conv sits in the model (IR-Net's trainers schedule only some convs)."""

    # --- training-time behaviour ----------------------------------------------------------
    def regularizer(self, model: nn.Module) -> Tensor:
        """Added to the task loss in training (and, where the authors did so, in validation)."""
        return torch.zeros((), device=next(model.parameters()).device)

    def schedule(self, epoch: int, epochs: int, **hparams: Any) -> dict[str, Any]:
        """The settings in force during `epoch` (0-based) of `epochs`; {} if nothing changes."""
        return {}

    # --- training stages -------------------------------------------------------------------
    def starts_from_checkpoint(self) -> bool:
        """True for a stage that cannot start from scratch (BiPer's stage 2): the trainer then
        needs `start_from` (a recipe's previous stage gives it)."""
        return False

    def on_stage_start(self, model: nn.Module, source_settings: dict[str, Any] | None = None,
                       **hparams: Any) -> None:
        """Called once when a training stage starts from an earlier stage's weights, with the settings
        that stage was built with (None for an authors' checkpoint) and this stage's schedule
        hyper-parameters (its hparam options)."""

    def lr_start_epoch(self) -> int:
        """The `last_epoch` the authors build their LR scheduler at: -1 (a fresh run), or 0 where
        their script starts counting at epoch 1 (BiPer's stage 2, quirk Q14)."""
        return -1

    def scheduler_last_epoch(self, warm_up: bool) -> int:
        """The `last_epoch` the authors build CosineAnnealingLR at; their loop still starts at
        lr_start_epoch() + 1. Usually the same epoch (RBNN's scripts subtract the warm-up's 4)."""
        return self.lr_start_epoch()

    def describe(self) -> str:
        """The method as logs and messages name it: 'siman', 'biper stage 2'."""
        return self.name

    # --- analysis ---------------------------------------------------------------------------
    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """Where this layer's binary weights change sign, for `bnnkit inspect`: (v, points) with v
        [O, k] the value each weight's bit is decided on (the latent weight, unless the method
        binarizes a transform of it) and points [P] (the same for every output channel) or [O, P]
        (per channel) the values of v at which a bit flips. A weight near a point is "undecided"
        (ReCU's dead weights). Default, sign(W): v = W, points = [0]."""
        w = layer.weight.detach().float()
        return w.reshape(w.shape[0], -1), torch.zeros(1, device=w.device)


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


def all_options() -> dict[str, list[tuple[type[Method], Option]]]:
    """Every registered method's options by name: the config keys and flags methods add."""
    out: dict[str, list[tuple[type[Method], Option]]] = {}
    for name in list_methods():
        cls = get_method(name)
        for o in cls.options:
            out.setdefault(o.name, []).append((cls, o))
    return out


def option_flag_type(name: str) -> Callable[[str], Any]:
    """The argparse `type` of the flag of option `name`: its type (booleans as true/false), finite,
    and valid for at least one method that has the option (each method checks its own when it
    validates a config)."""
    from .._command import flag_type, typed_value

    options = [o for _, o in all_options()[name]]

    def convert(text: str) -> Any:
        value = typed_value(options[0].type, text)
        problems = [o.problem(value) for o in options]
        if all(problems):  # argparse names the flag already
            raise ValueError(problems[0].replace(f"--{name} ", "", 1))
        return value
    return flag_type(convert, options[0].type)


def all_aliases() -> dict[str, str]:
    """Every registered method's config-key aliases (the authors' names): alias -> key."""
    return {a: k for name in list_methods() for a, k in get_method(name).aliases.items()}


def method_of(model: nn.Module) -> Method:
    spec = getattr(model, "bnnkit_spec", None)
    if spec is None:
        raise ValueError("this model was not built by bnnkit.create_model, so its method is unknown")
    return get_method(spec["method"])(spec["family"], **spec["settings"])


# Importing the method files registers them.
from . import biper, irnet, rbnn, reactnet, recu, siman, ste, xnor  # noqa: E402,F401
