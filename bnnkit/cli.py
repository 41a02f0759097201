"""The `bnnkit` command line: `bnnkit SUBCOMMAND ...` (also `python -m bnnkit`).

Adding a subcommand is one function decorated with @subcommand(name, help) taking argv and returning
the exit status; it builds its flags with bnnkit._command.ArgumentParser. Expected errors
(bnnkit.errors, argparse's, the disk's) print one line `error: ...` on stderr and exit 2 (usage:
bad or contradictory flags, unknown names, an occupied results folder) or 1 (runtime: data,
checkpoints, a diverged loss, a full disk), without a traceback (bnnkit._command). The training flags are generated from
the trainer's keys and every method's declared options (bnnkit.methods.Option).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Callable

from . import _allocator
from ._command import ArgumentParser, flag_type, number, run, typed_value
from .errors import ConfigError

SUBCOMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def subcommand(name: str, help: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    def add(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        SUBCOMMANDS[name] = (help, fn)
        return fn
    return add


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: bnnkit {" + ",".join(SUBCOMMANDS) + "} ...\n")
        for name, (text, _) in SUBCOMMANDS.items():
            print(f"  {name:14s}{text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    _allocator.tune()
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}; valid commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    try:
        return run(SUBCOMMANDS[name][1], rest)
    except KeyboardInterrupt:
        print("error: interrupted; resume with --resume", file=sys.stderr)
        return 130


# --- train ---------------------------------------------------------------------------------------------

# Short and alternative names the authors' scripts accept.
ALIASES = {"model": ["-a"], "batch_size": ["-b"], "batch_size_test": ["-bt"], "print_freq": ["-p"]}
FLAGS = ("warm_up", "use_dali", "sync_bn", "deterministic", "log_samples", "download", "allow_changed")


def train_parser() -> argparse.ArgumentParser:
    from .methods import all_aliases, all_options, get_method, list_methods
    from .train._config import all_keys

    p = ArgumentParser(prog="bnnkit train", description="Train a binary network (a recipe, flags, or both). "
                                "Every recipe key is also a flag; flags win. The authors' flags work under their names.")
    p.add_argument("recipe", nargs="?", help="recipe YAML path or name (e.g. recipes/cifar10/siman_resnet20.yaml)")
    for key, (kind, default, text) in all_keys().items():
        names = ALIASES.get(key, []) + [f"--{key}"]
        if key in FLAGS:
            p.add_argument(*names, dest=key, action="store_const", const=True, default=argparse.SUPPRESS, help=text)
        elif key == "resume":
            p.add_argument(*names, dest=key, nargs="?", const=True, default=argparse.SUPPRESS, metavar="PATH", help=text)
        else:
            p.add_argument(*names, dest=key, default=argparse.SUPPRESS, metavar=key.upper(), help=text,
                           type=_key_type(key, kind, all_options()))
    for alias, key in all_aliases().items():
        p.add_argument(f"--{alias}", dest=alias, default=argparse.SUPPRESS, metavar=key.upper(),
                       help=f"the authors' name of --{key}", type=_key_type(key, all_keys()[key][0], all_options()))
    for name in list_methods():
        for flag, values in get_method(name).const_flags.items():
            what = ", ".join(f"--{k} {v}" for k, v in values.items())
            p.add_argument(f"--{flag}", dest=f"const:{flag}", action="store_const", const=values,
                           default=argparse.SUPPRESS, help=f"the authors' flag: {get_method(name).display()} {what}")
    p.add_argument("-e", "--evaluate", metavar="FILE", default=argparse.SUPPRESS,
                   help="evaluate this checkpoint on the validation split instead of training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, also STAGE.KEY (stage1.KEY, ...) in multi-stage recipes")
    p.add_argument("--type", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the authors' tensor type: ignored
    p.add_argument("--time_estimate", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # always on here
    return p


def _key_type(key: str, kind: Any, options: dict) -> Callable[[str], Any] | None:
    """The argparse type of a training key's flag: a method option's (typed and range-checked), a
    number's or a list's (the trainer's ranges are checked with the whole config, before any
    work), None for a string."""
    from .methods import option_flag_type

    if key in options:
        return option_flag_type(key) if kind is not str else None
    if key == "backend":
        from .data import BACKENDS

        def backend(text: str) -> str:
            if text not in BACKENDS:
                raise ValueError(f"unknown backend {text!r}; choose one of {', '.join(BACKENDS)}")
            return text
        return flag_type(backend, str)
    if kind is list:
        def milestones(text: str) -> list[int]:
            try:
                return [int(v) for v in text.split(",")]
            except ValueError:
                raise ValueError(f"expected comma-separated epochs such as 100,150, got {text!r}") from None
        return flag_type(milestones, list)
    if kind in (int, float, bool):
        return flag_type(lambda text: typed_value(kind, text), kind)
    return None


def _apply_const_flags(args: dict[str, Any]) -> None:
    """The authors' value-less flags (--stage2) become the options they stand for."""
    for dest in [k for k in args if k.startswith("const:")]:
        for key, value in args.pop(dest).items():
            if key in args and str(args[key]) != str(value):
                raise ConfigError(f"--{dest[len('const:'):]} contradicts --{key} {args[key]}: give one of them")
            args[key] = value


def _launch_gpus(gpus: str, argv: list[str]) -> None:
    """The authors' `--gpus 0,1` (DataParallel) becomes one process per GPU under torchrun."""
    ids = [g for g in gpus.split(",") if g.strip()]
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(ids))
    if len(ids) > 1:
        import torch
        if not torch.cuda.is_available():
            print(f"warning: --gpus {gpus} asks for {len(ids)} GPUs but none is visible; training in one CPU process",
                  file=sys.stderr)
            return
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}",
               "-m", "bnnkit", "train", *argv]
        os.execv(sys.executable, cmd)


def recipe_with_overrides(recipe: str | None, args: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """The recipe with the command line applied. A flag typed on the command line beats the recipe
    everywhere, its stages included, except the options that tell a multi-stage recipe's stages
    apart (Option.per_stage) and where a stage starts from; --set STAGE.KEY=VALUE overrides one
    stage only."""
    from .methods import all_options
    from .train import load_recipe, merge, parse_set
    from .train._config import canonical, stage_names

    raw = load_recipe(recipe) if recipe else {}
    names = stage_names(raw)
    if names and any(canonical(k) == "start_from" for k in args):
        raise ConfigError("a multi-stage run starts each later stage from its previous stage: drop --start_from / "
                          "--load_ckpt_stage1, or give the first stage's with --set " + names[0] + ".start_from=PATH")
    fixed = {name for name, owners in all_options().items() if any(o.per_stage for _, o in owners)}
    stage_wide = {k: v for k, v in args.items() if k not in fixed}
    raw = merge(raw, {**args, **({"stages": {n: stage_wide for n in names}} if names else {})})
    return merge(raw, parse_set(sets, names))


def _check_train_flags(args: dict[str, Any]) -> None:
    """What the trainer would find only after decoding the data: files the flags name that are
    not there, a teacher that is neither a file nor a model name, GPU ids that are not ids."""
    from .methods import all_aliases

    paths = {k: v for k, v in args.items() if (k == "start_from" or all_aliases().get(k) == "start_from")}
    if isinstance(args.get("resume"), str) and args["resume"] not in ("True", "true", ""):
        paths["resume"] = args["resume"]
    for key, path in paths.items():
        if path and not os.path.exists(str(path)):
            raise ConfigError(f"--{key} {path}: there is no such checkpoint; check the path")
    gpus = args.get("gpus")
    if gpus is not None and not all(g.strip().isdigit() for g in str(gpus).split(",")):
        raise ConfigError(f"--gpus {gpus!r}: give GPU ids such as 0 or 0,1")
    if args.get("teacher"):
        from .train import check_teacher
        check_teacher(args["teacher"])


@subcommand("train", "train a model from a recipe and/or the authors' flags (multi-stage recipes run every stage)")
def cmd_train(argv: list[str]) -> int:
    from .train import train

    args = vars(train_parser().parse_args(argv))
    recipe, sets = args.pop("recipe"), args.pop("set")
    if isinstance(args.get("resume"), str) and args["resume"].endswith((".yaml", ".yml")) and recipe is None:
        recipe, args["resume"] = args["resume"], True  # `--resume RECIPE.yaml`: the flag took the recipe
    args.pop("type", None), args.pop("time_estimate", None)
    _apply_const_flags(args)
    if "evaluate" in args:
        if args.get("resume"):
            raise ConfigError("-e/--evaluate evaluates a checkpoint; --resume continues training: give one of them")
        return _print_eval(args.pop("evaluate"), args, as_json=False)
    _check_train_flags(args)
    raw = recipe_with_overrides(recipe, args, sets)
    if args.get("gpus"):
        _launch_gpus(str(args["gpus"]), argv)
    results = train(raw)
    for r in results:
        print(f"{r['run_dir']}: best epoch {r['best_epoch']}, best top-1 {r['best_prec1']:.2f}")
    return 0


# --- eval and qe ---------------------------------------------------------------------------------------

def _checkpoint_parser(prog: str, text: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=text)
    p.add_argument("checkpoint", help="a bnnkit checkpoint (last.pt/best.pt or a run folder), or an authors' .pth.tar")
    p.add_argument("-a", "--model", help="model (authors' checkpoints only)")
    p.add_argument("--method", help="method (authors' checkpoints only)")
    p.add_argument("--dataset", help="dataset (authors' checkpoints only)")
    from .methods import all_options, option_flag_type
    for name, owners in all_options().items():
        if any(o.rebuilds for _, o in owners):
            p.add_argument(f"--{name}", type=option_flag_type(name),
                           help=f"{'; '.join(o.help for _, o in owners if o.rebuilds)} (authors' checkpoints)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _print_eval(path: str, opts: dict[str, Any], as_json: bool) -> int:
    from .train import evaluate_checkpoint
    from .train._evaluate import rebuild_options

    if not opts.get("data_path"):
        raise ConfigError("eval needs the data: pass --data_path DIR (or CIFAR's .tar.gz)")
    from .train._config import coerce
    for key in ("batch_size_test", "val_subset", "workers", *rebuild_options()):
        if opts.get(key) is not None:
            opts[key] = coerce(key, opts[key])
    res = evaluate_checkpoint(path, opts)
    if not all(math.isfinite(res[k]) for k in ("loss", "top1", "top5")):
        from .errors import NonFiniteLossError
        raise NonFiniteLossError(f"{path} gives a non-finite validation loss ({res['loss']}): the model diverged; "
                                 f"evaluate an earlier checkpoint, or retrain with a lower --lr")
    if as_json:
        print(json.dumps(res))
    else:
        print(f"{path}: loss {res['loss']:.4f} top1 {res['top1']:.2f} top5 {res['top5']:.2f} ({res['images']} images)")
    return 0


@subcommand("eval", "evaluate a checkpoint on the validation split")
def cmd_eval(argv: list[str]) -> int:
    from .data import BACKENDS

    p = _checkpoint_parser("bnnkit eval", "One validation pass of a checkpoint; a bnnkit checkpoint needs no other flag.")
    p.add_argument("--data_path", help="dataset root")
    p.add_argument("-bt", "--batch_size_test", type=number(int, 1))
    p.add_argument("--val_subset", type=number(int, 1), help="evaluate on a class-balanced subset")
    p.add_argument("--workers", type=number(int, 0))
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cache_dir")
    p.add_argument("--amp", choices=["bf16", "fp16"])
    a = vars(p.parse_args(argv))
    return _print_eval(a.pop("checkpoint"), a, a.pop("json"))


@subcommand("qe", "print the quantisation error per layer and in total (BiPer's QE)")
def cmd_qe(argv: list[str]) -> int:
    from .train import load_any, quantization_error
    from .train._evaluate import rebuild_options

    p = _checkpoint_parser("bnnkit qe", "QE = sum_l QE_l and b = sum_l mean|W_l| with the method's own per-layer QE "
                           "(BiPer's mean|sin(f W_l) - sign(sin(f W_l))|, REFERENCE.md §5, at the checkpoint's own "
                           "frequency); with --freq F on a model without a frequency, BiPer's QE at F.")
    a = vars(p.parse_args(argv))
    model, _ = load_any(a["checkpoint"], model=a["model"], method=a["method"], dataset=a["dataset"],
                        **{k: a.get(k) for k in rebuild_options()})
    res = quantization_error(model)
    if res is None and a.get("freq") is not None:  # --freq on a model without a frequency of its own
        res = quantization_error(model, a["freq"])
    if res is None:
        raise ConfigError(f"QE is BiPer's measure and {model.bnnkit_spec['method']} defines none of its own: "
                          f"pass --freq F to compute BiPer's at frequency F anyway")
    if a["json"]:
        print(json.dumps(res))
        return 0
    width = max(len(l["layer"]) for l in res["layers"])
    print(f"{'layer':{width}s}  {'QE':>10s}  {'mean|W|':>10s}")
    for l in res["layers"]:
        print(f"{l['layer']:{width}s}  {l['qe']:10.6f}  {l['b']:10.6f}")
    print(f"{'total':{width}s}  {res['qe']:10.6f}  {res['b']:10.6f}")
    print(f"QE={res['qe']:.6f}\nb={res['b']:.6f}")
    return 0


@subcommand("summary", "summarise a model (parameters, binary operations, layers)")
def cmd_summary(argv: list[str]) -> int:
    from .analysis.summary import main as summary_main
    return summary_main(argv)


@subcommand("bench", "training and evaluation throughput against the float network of the same topology")
def cmd_bench(argv: list[str]) -> int:
    from .analysis.bench import main as bench_main
    return bench_main(argv)


@subcommand("plot", "overlay training runs (loss, accuracy, lr, scheduled settings, flips, QE), mean and band over seeds")
def cmd_plot(argv: list[str]) -> int:
    from .analysis.plots import main as plot_main
    return plot_main(argv)


@subcommand("inspect", "per binary layer of a checkpoint: weights against decision points, undecided and +1 fractions, QE")
def cmd_inspect(argv: list[str]) -> int:
    from .analysis.inspection import main as inspect_main
    return inspect_main(argv)


@subcommand("compare", "train a grid of methods x models x settings x seeds (resumable), then one table and report")
def cmd_compare(argv: list[str]) -> int:
    from .analysis.compare import main as compare_main
    return compare_main(argv)


@subcommand("export", "export a trained binary network, bit-packed, for the CPU runtime (model.bnn)")
def cmd_export(argv: list[str]) -> int:
    from .deploy import cli_export
    return cli_export(argv)


@subcommand("bench-deploy", "latency of the packed runtime against PyTorch float32, per layer and end to end")
def cmd_bench_deploy(argv: list[str]) -> int:
    from .deploy import cli_bench
    return cli_bench(argv)


if __name__ == "__main__":
    sys.exit(main())
