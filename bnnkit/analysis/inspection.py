"""`bnnkit inspect CKPT [--data_path DIR] -o DIR`: what a trained binary network's layers look like.

Per binary conv: a histogram of the value its bits are decided on (the latent weight for most
methods) with the method's decision points marked (Method.decision_points, so any registered
method works without being named here); the "undecided" fraction, weights within delta * std(v)
of a decision point (ReCU's dead weights); the +1 fraction of each output channel (SiMaN's bit
balance); the method's own QE; and, on one batch of validation images, the fraction of +1
activations and the mean |value| each binary conv's input quantizer receives. Writes
inspect.md, inspect.csv and PNGs.
"""
from __future__ import annotations

import csv
import os
from typing import Any

import torch
from torch import Tensor, nn

from .._command import ArgumentParser
from ..errors import ConfigError
from ..methods import method_of
from ..nn import _packed_eval
from ..nn.layers import binary_convs
from ..train import load_any, quantization_error

DELTA = 0.05  # "near" a decision point: within this many standard deviations of the layer's v
COLUMNS = ["layer", "out_channels", "weights", "undecided", "plus_one", "plus_one_min", "plus_one_max", "qe",
           "act_plus_one", "act_mean_abs"]


@torch.no_grad()
def undecided_fraction(v: Tensor, points: Tensor, delta: float = DELTA) -> float:
    """Fraction of v [O, k] within delta * std(v) of a decision point (points [P] or [O, P])."""
    p = points.to(v.dtype)
    p = p.reshape(1, 1, -1) if p.dim() == 1 else p.unsqueeze(1)
    near = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    tol = delta * float(v.std())
    for j in range(p.shape[-1]):  # one point at a time: no [O, k, P] temporary on large layers
        near |= (v - p[..., j]).abs() < tol
    return float(near.float().mean())


@torch.no_grad()
def weight_stats(model: nn.Module, delta: float = DELTA) -> list[dict[str, Any]]:
    """One row per binary conv: its undecided fraction, +1 fractions and QE."""
    method = method_of(model)
    qe = quantization_error(model)
    qe_of = {l["layer"]: l["qe"] for l in qe["layers"]} if qe else {}
    rows = []
    for name, conv in binary_convs(model):
        v, points = method.decision_points(conv)
        bits = conv.weight_quantizer.sign_bits(conv.weight).reshape(conv.weight.shape[0], -1).float()
        per_channel = bits.mean(dim=1)
        rows.append({"layer": name, "out_channels": conv.weight.shape[0], "weights": conv.weight.numel(),
                     "undecided": undecided_fraction(v, points, delta), "plus_one": float(bits.mean()),
                     "plus_one_min": float(per_channel.min()), "plus_one_max": float(per_channel.max()),
                     "qe": qe_of.get(name), "_v": v.cpu(), "_points": points.cpu(), "_channels": per_channel.cpu()})
    return rows


@torch.no_grad()
def activation_stats(model: nn.Module, images: Tensor) -> dict[str, dict[str, float]]:
    """Per binary conv with a binary input: the fraction of +1 among its binarized inputs and the
    mean |x| its input quantizer receives, on one forward of `images` in eval mode (forward hooks;
    the packed CPU paths, which bypass the quantizer modules, are off meanwhile)."""
    out: dict[str, dict[str, float]] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            out[name] = {"act_plus_one": float((output > 0).float().mean()),
                         "act_mean_abs": float(inputs[0].abs().mean())}
        return record

    for name, conv in binary_convs(model):
        if conv.binary_input:
            hooks.append(conv.input_quantizer.register_forward_hook(hook(name)))
    was = _packed_eval.set_enabled(False)
    try:
        model.eval()(images)
    finally:
        _packed_eval.set_enabled(was)
        for h in hooks:
            h.remove()
    return out


def _one_batch(spec: dict[str, Any], data_path: str, batch: int, device: torch.device) -> Tensor:
    from ..data import build_loader

    loader = build_loader(spec["dataset"], data_path, "val", batch, train=False, subset=batch, workers=1,
                          device=device)
    for images, _ in loader:
        return images
    raise ConfigError(f"--data_path {data_path}: its validation split gave no images")


def _draw(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    from matplotlib.figure import Figure

    from ..figures import save_png

    written = []
    wdir = os.path.join(out_dir, "weights")
    os.makedirs(wdir, exist_ok=True)
    for r in rows:
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        ax.hist(r["_v"].flatten().numpy(), bins=100, color="C0", alpha=0.8)
        pts = r["_points"]
        if pts.dim() == 1:  # the same points for every channel: a line each
            for p in pts.tolist():
                ax.axvline(p, color="C3", linewidth=1)
        else:  # per-channel points: a rug of them under the histogram, and their mean as a line
            ax.plot(pts.flatten().numpy(), [0] * pts.numel(), "|", color="C3", markersize=12, alpha=0.5)
            for p in pts.mean(dim=0).tolist():
                ax.axvline(p, color="C3", linewidth=1, linestyle="--")
        ax.set_title(f"{r['layer']}: undecided {100 * r['undecided']:.2f}%, +1 {100 * r['plus_one']:.1f}%")
        ax.set_xlabel("value the bit is decided on (red: decision points)")
        ax.set_ylabel("weights")
        fig.tight_layout()
        path = os.path.join(wdir, f"{r['layer'].replace('.', '_')}.png")
        save_png(fig, path)
        written.append(path)
    names = [r["layer"] for r in rows]
    x = list(range(len(rows)))
    summary = [("undecided", "Undecided fraction per layer", [r["undecided"] for r in rows]),
               ("qe", "Quantisation error per layer", [r["qe"] for r in rows]),
               ("act_plus_one", "Fraction of +1 activations per layer", [r.get("act_plus_one") for r in rows]),
               ("act_mean_abs", "Mean |pre-binarization activation| per layer", [r.get("act_mean_abs") for r in rows])]
    for key, title, values in summary:
        if all(v is None for v in values):
            continue
        fig = Figure(figsize=(max(6.4, 0.35 * len(rows)), 4.0))
        ax = fig.add_subplot()
        ax.bar(x, [float("nan") if v is None else v for v in values], color="C0")
        _layer_axis(ax, x, names, title, key)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{key}.png")
        save_png(fig, path)
        written.append(path)
    fig = Figure(figsize=(max(6.4, 0.35 * len(rows)), 4.0))
    ax = fig.add_subplot()
    ax.boxplot([r["_channels"].numpy() for r in rows], positions=x)
    ax.axhline(0.5, color="0.5", linestyle=":")
    _layer_axis(ax, x, names, "+1 fraction of each output channel", "+1 fraction")
    fig.tight_layout()
    path = os.path.join(out_dir, "bit_balance.png")
    save_png(fig, path)
    return written + [path]


def _layer_axis(ax: Any, x: list[int], names: list[str], title: str, ylabel: str) -> None:
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def inspect_checkpoint(path: str, out_dir: str, data_path: str | None = None, delta: float = DELTA,
                       batch: int = 128, device: str = "cpu") -> list[dict[str, Any]]:
    """Inspect a bnnkit checkpoint into out_dir (inspect.md, inspect.csv, PNGs); returns the table's rows."""
    if delta <= 0:
        raise ConfigError(f"--delta {delta}: give a positive distance (in standard deviations of a layer's weights)")
    model, _ = load_any(path)
    dev = torch.device(device)
    model = model.to(dev)
    rows = weight_stats(model, delta)
    if data_path:
        acts = activation_stats(model, _one_batch(model.bnnkit_spec, data_path, batch, dev))
        for r in rows:
            r.update(acts.get(r["layer"], {}))
    os.makedirs(out_dir, exist_ok=True)
    _draw(rows, out_dir)
    table = [{k: r.get(k) for k in COLUMNS} for r in rows]
    with open(os.path.join(out_dir, "inspect.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows({k: _cell(v) for k, v in t.items()} for t in table)
    spec = model.bnnkit_spec
    with open(os.path.join(out_dir, "inspect.md"), "w") as fh:
        fh.write(f"# {path}\n\n{method_of(model).describe()}, {spec['model']} on {spec['dataset']}; undecided: "
                 f"within {delta} std of a decision point"
                 + (f"; activations on {batch} validation images" if data_path else "") + "\n\n")
        fh.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for t in table:
            fh.write("| " + " | ".join(_cell(t[k]) for k in COLUMNS) + " |\n")
    return table


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="bnnkit inspect", description="Per binary layer of a bnnkit checkpoint: the "
                                "weights against the method's decision points, the undecided fraction, the +1 "
                                "fraction per output channel, QE and, with --data_path, activation statistics on "
                                "one validation batch. Writes inspect.md, inspect.csv and PNGs.")
    p.add_argument("checkpoint", help="a bnnkit checkpoint (last.pt/best.pt or a run folder)")
    p.add_argument("--data_path", help="dataset root (or CIFAR's .tar.gz): adds the activation statistics")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for the tables and PNGs")
    p.add_argument("--delta", type=float, default=DELTA, help=f"undecided: within DELTA std of a point ({DELTA})")
    p.add_argument("-b", "--batch_size", type=int, default=128, help="validation images for the activations (128)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        raise ConfigError(f"--batch_size {a.batch_size}: give 1 or more")
    rows = inspect_checkpoint(a.checkpoint, a.out, a.data_path, a.delta, a.batch_size, a.device)
    width = max(len(r["layer"]) for r in rows)
    print(f"{'layer':{width}s}  undecided  +1 frac" + ("  act +1" if a.data_path else ""))
    for r in rows:
        print(f"{r['layer']:{width}s}  {r['undecided']:9.4f}  {r['plus_one']:7.4f}"
              + (f"  {r['act_plus_one']:6.4f}" if r.get("act_plus_one") is not None else ""))
    print(os.path.join(a.out, "inspect.md"))
    return 0
