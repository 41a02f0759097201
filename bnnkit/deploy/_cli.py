"""Command lines of the deployment path (the lead wires them into `bnnkit`):

    bnnkit export CKPT -o model.bnn [--input-shape 1,3,32,32] [--compact]
        CKPT: a bnnkit checkpoint (self-describing), or an authors' checkpoint with
        --method/--model/--dataset (and the settings its method needs to rebuild it, e.g. BiPer's
        --freq F), loaded by bnnkit.compat.
    bnnkit bench-deploy [--model resnet18_1w1a --method biper --dataset imagenet | --checkpoint CKPT]
        latency of the packed runtime against PyTorch float32 eager, per layer and end to end.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

import torch
from torch import nn

from .._command import ArgumentParser, flag_type, number, run
from ..errors import ConfigError

INPUT_SHAPES = {"cifar": (1, 3, 32, 32), "imagenet": (1, 3, 224, 224)}


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W such as 1,3,32,32, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive sizes N,C,H,W, got {text!r}")
    return shape


def _counts(word: str | None = None):
    """The converter of a comma list of positive integers (`word`, e.g. 'all', allowed too)."""
    def convert(text: str) -> str:
        for item in text.split(","):
            if item.strip() != word and not (item.strip().isdigit() and int(item) >= 1):
                raise ValueError(f"expected a comma list of positive integers{f' or {word!r}' if word else ''}, "
                                 f"got {text!r}")
        return text
    return convert


def _rebuild_options() -> dict[str, tuple[type, str]]:
    """The method options needed to rebuild an authors' checkpoint (Option.rebuilds): name -> (type, help)."""
    from ..methods import all_options

    return {name: (owners[0][1].type, "; ".join(o.help for _, o in owners if o.rebuilds))
            for name, owners in all_options().items() if any(o.rebuilds for _, o in owners)}


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(a, key) for key in _rebuild_options() if getattr(a, key, None) is not None}


def load_model(path: str, *, method: str | None = None, model: str | None = None, dataset: str | None = None,
               num_classes: int | None = None, **settings: Any) -> nn.Module:
    """A model from a bnnkit checkpoint (format 'bnnkit-checkpoint': rebuilt from its spec) or,
    given method and model, from an authors' checkpoint via bnnkit.compat.load_reference."""
    from .. import create_model
    from ..compat import CheckpointError, load_reference
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist; check the path") from None
    except Exception as exc:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise CheckpointError(f"checkpoint {path} is an empty file; pass the trained checkpoint") from None
        if "Unsupported global" in str(exc):
            raise CheckpointError(f"checkpoint {path} holds pickled code, which bnnkit never loads since loading it "
                                  f"could run anything; use a file of tensors only (a bnnkit checkpoint)") from None
        first = (str(exc).splitlines() or [""])[0][:160]
        raise CheckpointError(f"cannot read checkpoint {path!r} ({type(exc).__name__}: {first}); "
                              "is it a complete PyTorch checkpoint?") from None
    if isinstance(obj, dict) and obj.get("format") == "bnnkit-checkpoint" and not (
            isinstance(obj.get("spec"), dict) and isinstance(obj.get("state_dict"), dict)):
        raise CheckpointError(f"checkpoint {path} is a bnnkit checkpoint without its spec or state_dict; the file is "
                              f"damaged, use an intact one")
    if isinstance(obj, dict) and obj.get("format") == "bnnkit-checkpoint" and isinstance(obj.get("spec"), dict):
        spec = obj["spec"]
        for key, want in (("method", method), ("model", model), ("dataset", dataset)):
            if want is not None and spec.get(key) != want:
                raise CheckpointError(f"{path} is a {spec.get('method')} {spec.get('model')} ({spec.get('dataset')}) "
                                      f"checkpoint, not {key} {want!r}; drop --{key} or pass the right checkpoint")
        net = create_model(spec["model"], method=spec["method"], dataset=spec["dataset"],
                           num_classes=spec.get("num_classes"), **{**spec.get("settings", {}), **settings})
        try:
            net.load_state_dict(obj["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit its own spec ({str(exc).splitlines()[0][:160]}); "
                                  "the file is damaged or from another bnnkit version") from None
        return net
    if method is None or model is None:
        raise ConfigError(f"{path} is not a bnnkit checkpoint; for an authors' checkpoint pass --method and --model "
                          "(and --dataset, and the settings its method needs, e.g. BiPer's --freq F)")
    from ..methods import get_method
    cls = get_method(method)
    for key, value in cls.export_settings.items():
        if settings.get(key, value) != value:
            raise ConfigError(f"{cls.display()} has binary weights to export only with --{key} {value}, "
                              f"not --{key} {settings[key]}; export a checkpoint of that {key}")
    given = {**cls.export_settings, **settings}
    settings = cls.authors_settings(path, {o.name: given.get(o.name) for o in cls.options if o.rebuilds})
    return load_reference(obj, method, model, num_classes=num_classes, dataset=dataset, **settings)


def _common_model_args(p: argparse.ArgumentParser) -> None:
    from ..methods import list_methods, option_flag_type
    p.add_argument("--method", help=f"authors' checkpoints: {', '.join(list_methods())} (bnnkit checkpoints say it themselves)")
    p.add_argument("--model", help="authors' checkpoints: the model name, e.g. resnet20_1w1a")
    p.add_argument("--dataset", help="cifar10, cifar100, imagenet or tinyimagenet")
    p.add_argument("--num-classes", type=number(int, 1))
    for name, (kind, text) in _rebuild_options().items():
        p.add_argument(f"--{name}", type=option_flag_type(name), help=text)


def cli_export(argv: list[str] | None = None) -> int:
    """`bnnkit export`: exit 0, or 2 (usage) / 1 (runtime) after one `error:` line."""
    return run(_export, list(sys.argv[1:] if argv is None else argv))


def _export(argv: list[str]) -> int:
    p = ArgumentParser(prog="bnnkit export", description="Export a trained binary network to a packed .bnn file "
                                "for the CPU runtime (bnnkit.deploy.load).")
    p.add_argument("checkpoint", help="bnnkit checkpoint, or the authors' checkpoint with --method/--model")
    p.add_argument("-o", "--output", required=True, help="the .bnn file to write")
    p.add_argument("--input-shape", type=_shape, help="N,C,H,W the model takes (default 1,3,32,32 for CIFAR, 1,3,224,224 for ImageNet)")
    p.add_argument("--compact", action="store_true",
                   help="store the real convs' and linear layers' weights as int8 per output channel (float16 where "
                        "int8 is not enough): a smaller file whose logits are no longer bit-identical to the model's")
    _common_model_args(p)
    a = p.parse_args(argv)
    from ._export import export
    out_dir = os.path.dirname(os.path.abspath(a.output))
    if os.path.exists(a.output) and os.path.exists(a.checkpoint) and os.path.samefile(a.output, a.checkpoint):
        raise ConfigError(f"-o {a.output} is the checkpoint itself; pass another file name (e.g. model.bnn)")
    if not os.path.isdir(out_dir):
        raise ConfigError(f"-o {a.output}: folder {out_dir} does not exist; create it first or pass another path")
    if os.path.isdir(a.output):
        raise ConfigError(f"-o {a.output} is a folder; pass a file name (e.g. {os.path.join(a.output, 'model.bnn')})")
    net = load_model(a.checkpoint, method=a.method, model=a.model, dataset=a.dataset, num_classes=a.num_classes,
                     **_settings(a))
    spec = getattr(net, "bnnkit_spec", {})
    shape = a.input_shape or INPUT_SHAPES.get(spec.get("family", "cifar"), INPUT_SHAPES["cifar"])
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if convs and len(shape) == 4 and shape[1] != convs[0].in_channels:
        raise ConfigError(f"--input-shape {','.join(map(str, shape))} gives {shape[1]} channels but the model takes "
                          f"{convs[0].in_channels}; pass N,{convs[0].in_channels},H,W")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = export(net, a.output, example_input_shape=shape, compact=a.compact)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    ratio = info["float32_params_bytes"] / max(info["bytes"], 1)
    stored = (f", compact: {info['int8_tensors']} real weights int8, {info['float16_tensors']} float16"
              if a.compact else "")
    print(f"wrote {a.output}: {info['bytes'] / 1e6:.2f} MB, {info['binary_convs']} binary convs packed{stored}, "
          f"1/{ratio:.1f} of the float32 state_dict ({info['float32_params_bytes'] / 1e6:.2f} MB)")
    return 0


def cli_bench(argv: list[str] | None = None) -> int:
    """`bnnkit bench-deploy`: exit 0, or 2 (usage) / 1 (runtime) after one `error:` line."""
    return run(_bench, list(sys.argv[1:] if argv is None else argv))


def _bench(argv: list[str]) -> int:
    from ..methods import option_flag_type
    p = ArgumentParser(prog="bnnkit bench-deploy", description="Latency of the packed CPU runtime against "
                                "PyTorch float32 eager (same network with plain float convs), per layer and end to end.")
    p.add_argument("--checkpoint", help="benchmark this checkpoint's model (default: a randomly initialised --model)")
    p.add_argument("--model", help="model name (default resnet18_1w1a; with --checkpoint: for authors' checkpoints)")
    p.add_argument("--method", help="a registered method (default: bnnkit.methods.DEFAULT_METHOD), in the settings "
                   "under which it has binary weights (Method.export_settings, e.g. BiPer's stage 2)")
    p.add_argument("--dataset", help="default imagenet")
    p.add_argument("--num-classes", type=number(int, 1))
    for name, (kind, text) in _rebuild_options().items():
        p.add_argument(f"--{name}", type=option_flag_type(name), help=text)
    p.add_argument("--seed", type=number(int, 0), default=0,
                   help="initialises the random model (without --checkpoint), so that runs time the same network")
    p.add_argument("--threads", default="1,all", type=flag_type(_counts("all"), str), help="comma list of thread counts; 'all' = every core (default 1,all)")
    p.add_argument("--batch", default="1,32", type=flag_type(_counts(), str), help="comma list of batch sizes (default 1,32)")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--min-time", type=number(float, 0.0), default=0.5, help="seconds of repeats per measurement (at least 3 runs)")
    p.add_argument("--isa", choices=["auto", "avx512", "avx2", "portable"],
                   help="force avx512, avx2 or portable (default: best available, or $BNNKIT_ISA)")
    p.add_argument("--layout", default="nchw", choices=["nchw", "channels_last", "both"],
                   help="memory layout of the input given to both networks (default nchw)")
    p.add_argument("--json", help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        raise ConfigError(f"--json {a.json}: folder {os.path.dirname(os.path.abspath(a.json))} does not exist; "
                          "create it first or pass another path")
    from ._bench import run_bench
    settings = _settings(a)
    try:
        threads = [os.cpu_count() or 1 if t.strip() == "all" else int(t) for t in a.threads.split(",")]
        batches = [int(b) for b in a.batch.split(",")]
    except ValueError:
        p.error("--threads and --batch take comma lists of integers ('all' allowed for --threads)")
    if a.checkpoint:
        net = load_model(a.checkpoint, method=a.method, model=a.model, dataset=a.dataset, num_classes=a.num_classes,
                         **settings)
    else:
        from .. import create_model
        from ..methods import DEFAULT_METHOD, get_method
        method = a.method or DEFAULT_METHOD
        settings = {**get_method(method).export_settings, **settings}
        torch.manual_seed(a.seed)  # a weight exactly 0 (sign 0) costs its layer a correction: same model, same cost
        net = create_model(a.model or "resnet18_1w1a", method=method, dataset=a.dataset or "imagenet",
                           num_classes=a.num_classes, **settings)
    run_bench(net, threads=threads, batches=batches, layers=not a.no_layers, min_time=a.min_time, isa=a.isa,
              json_path=a.json, layouts=("nchw", "channels_last") if a.layout == "both" else (a.layout,))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_bench(sys.argv[1:]))
