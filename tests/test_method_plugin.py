"""A method is one file: a toy method defined here, in the test, registered, then trained in two
stages (killed with SIGKILL and resumed to the same bits), evaluated, measured with `qe` and
`summary`, exported and run packed, and benchmarked, with no other module of bnnkit knowing it.

The toy: weights sign(W) with the clipped straight-through gradient g * 1{|W| <= width}, where
`width` is scheduled from `width_max` (width(e) = width_max * (1 - e / (2E))); phase 1 trains real
tanh(W) weights, phase 2 the binary ones, starting from phase 1's best; inputs sign(x) with
ApproxSign's gradient; a learned per-channel scale.
"""
from __future__ import annotations

import json
import signal
import sys
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import bnnkit
from bnnkit import deploy
from bnnkit.methods import METHODS, Method, Option
from bnnkit.nn.functional import approx_sign
from bnnkit.nn.layers import BinaryConv2d, binary_convs
from bnnkit.nn.quantizers import InputQuantizer, WeightQuantizer
from bnnkit.train import model_from_checkpoint, read_checkpoint
from tests._train_fixtures import CIFAR, PYTHON, ROOT, cli, env


class _WidthSign(torch.autograd.Function):
    @staticmethod
    def forward(w: Tensor, width: float) -> Tensor:
        return torch.sign(w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.width = inputs[1]

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= ctx.width).to(g.dtype), None


class ToyWeight(WeightQuantizer):
    """Phase 1: W_b = tanh(W), backward (1 - tanh^2 W) g. Phase 2: W_b = sign(W), backward
    g * 1{|W| <= width}. `handover` holds mean|W| per output channel from phase 2's start."""

    name = "toy_weight"
    settings = ("phase", "width")

    def __init__(self, out_channels: int, phase: int, width: float) -> None:
        super().__init__()
        self.phase, self.width = phase, width
        self.register_buffer("handover", torch.zeros(out_channels))

    def forward(self, weight: Tensor) -> Tensor:
        return torch.tanh(weight) if self.phase == 1 else _WidthSign.apply(weight, self.width)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        if self.phase != 2:
            raise ValueError("a phase-1 toy layer has real tanh(W) weights; export a phase-2 model")
        return torch.sign(weight)

    @torch.no_grad()
    def sign_bits(self, weight: Tensor) -> Tensor:
        return weight > 0

    def quantization_error(self, weight: Tensor) -> Tensor:
        return (torch.tanh(weight) - torch.sign(weight)).abs().mean()


class ToyInput(InputQuantizer):
    """x_b = sign(x); backward max(0, 2 - 2|x|) g."""

    name = "toy_input"
    sign_valued = True

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(x)


class Toy(Method):
    name = "toy"
    title = "Toy"
    year = 2026
    defaults = {"phase": 1, "width": 1.0}
    options = (
        Option("phase", int, 1, "toy phase (1: tanh weights, 2: sign weights)", choices=(1, 2), per_stage=True,
               rebuilds=True),
        Option("width_max", float, 1.0, "toy straight-through width at epoch 0", hparam=True),
    )
    export_settings = {"phase": 2}

    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter:
        return nn.Parameter(conv.weight.detach().abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1).clone())

    def make_weight_quantizer(self, conv: BinaryConv2d) -> ToyWeight:
        return ToyWeight(conv.out_channels, self.settings["phase"], self.settings["width"])

    def make_input_quantizer(self, conv: BinaryConv2d) -> ToyInput:
        return ToyInput()

    def schedule(self, epoch: int, epochs: int, *, width_max: float | None = None, **hparams: Any) -> dict[str, Any]:
        return {} if width_max is None else {"width": width_max * (1 - epoch / (2 * epochs))}

    def starts_from_checkpoint(self) -> bool:
        return self.settings["phase"] == 2

    def on_stage_start(self, model: nn.Module, source_settings: dict | None = None, **hparams) -> None:
        with torch.no_grad():
            for _, conv in binary_convs(model):
                conv.weight_quantizer.handover.copy_(conv.weight.abs().mean(dim=(1, 2, 3)))

    def describe(self) -> str:
        return f"toy phase {self.settings['phase']}"


def register() -> None:
    METHODS.register()(Toy)


@pytest.fixture(scope="module")
def toy():
    register()
    yield Toy
    METHODS.remove("toy")


RECIPE = """\
method: toy
model: resnet20_1w1a
dataset: cifar10
lr_type: cos
width_max: 0.8
seed: 3
stages:
  - name: phase1
    phase: 1
    epochs: 2
    lr: 0.05
  - name: phase2
    phase: 2
    epochs: 2
    lr: 0.01
"""
RUN = ["--data_path", CIFAR, "--subset", "64", "--val_subset", "64", "-b", "32", "-bt", "64", "--workers", "1",
       "--threads", "1", "--deterministic", "--checkpoint_every", "1", "--set", "tensorboard=false"]


def train_subprocess(recipe, results, save, *extra, **environ):
    """`bnnkit train` in a process that registers the toy method first, as a plug-in package would."""
    import subprocess

    code = ("import sys; import tests.test_method_plugin as t; t.register(); "
            "from bnnkit.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([PYTHON, "-c", code, "train", str(recipe), *map(str, RUN), "--results_dir", str(results),
                           "--save", save, *extra], cwd=ROOT, env=env(**environ), capture_output=True, text=True,
                          timeout=600)


def test_a_method_defined_in_a_test_file_trains_resumes_evaluates_exports_and_benches(toy, tmp_path, capsys):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    straight = train_subprocess(recipe, tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr
    killed = train_subprocess(recipe, tmp_path, "crash", BNNKIT_DEBUG_KILL_AT="1:1")  # phase 1, epoch 1, batch 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "crash" / "phase2").exists()
    again = train_subprocess(recipe, tmp_path, "crash", "--resume")
    assert again.returncode == 0, again.stderr
    for stage in ("phase1", "phase2"):
        a, b = (read_checkpoint(str(tmp_path / run / stage / "last.pt")) for run in ("straight", "crash"))
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), stage
        assert a["spec"]["settings"]["phase"] == int(stage[-1])
    run = tmp_path / "straight"

    # the schedule the trainer applied, in the CSV, and the stage hand-over
    import csv
    rows = {s: list(csv.DictReader(open(run / s / "metrics.csv"))) for s in ("phase1", "phase2")}
    for s in rows:
        assert [float(r["width"]) for r in rows[s]] == pytest.approx([0.8 * (1 - e / 4) for e in range(2)])
        assert all(float(r["qe"]) > 0 for r in rows[s])  # the method's own QE, logged per epoch
    p1, p2 = (read_checkpoint(str(run / s / "last.pt"))["state_dict"] for s in ("phase1", "phase2"))
    handovers = [k for k in p2 if k.endswith("handover")]
    assert handovers and all(not p1[k].any() for k in handovers) and all(p2[k].all() for k in handovers)
    assert "toy phase 2 starts from" in (run / "phase2" / "log.txt").read_text()

    # eval reproduces the logged validation of the best epoch; qe and summary know the method
    best = run / "phase2" / "best.pt"
    code, out, err = cli("eval", best, "--data_path", CIFAR, "--val_subset", "64", "--json")
    assert code == 0, err
    best_row = max(rows["phase2"], key=lambda r: float(r["val_top1"]))
    assert json.loads(out)["top1"] == pytest.approx(float(best_row["val_top1"]))
    code, out, err = cli("qe", best)
    assert code == 0 and "QE=" in out, err
    code, out, err = cli("summary", "resnet20_1w1a", "--method", "toy")
    assert code == 0 and "toy" in out, err

    # export: the packed runtime's logits equal the model's
    code, out, err = cli("export", best, "-o", tmp_path / "toy.bnn")
    assert code == 0, err
    model = model_from_checkpoint(read_checkpoint(str(best))).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deploy.load(str(tmp_path / "toy.bnn"))(x), model(x))
    code, _, err = cli("export", run / "phase1" / "best.pt", "-o", tmp_path / "phase1.bnn")
    assert code != 0 and "phase-1" in err and not (tmp_path / "phase1.bnn").exists()

    # the generated CLI and bench know it through its declarations
    from bnnkit.cli import train_parser
    text = train_parser().format_help()
    assert "--phase" in text and "--width_max" in text
    from bnnkit.analysis.bench import main as bench_main
    capsys.readouterr()
    assert bench_main(["--models", "resnet20_1w1a", "--methods", "toy", "--batch", "4", "--rounds", "1",
                       "--warmup", "0", "--matmul_size", "256", "--profile", "never"]) == 0
    assert any(line.split()[:2] == ["resnet20_1w1a", "toy"] for line in capsys.readouterr().out.splitlines())


def test_no_module_of_the_package_names_a_method_outside_methods_and_models():
    import re

    pattern = re.compile(r"[\"'](" + "|".join(map(re.escape, bnnkit.list_methods())) + r")[\"']")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "bnnkit").rglob("*.py"))
            if p.parent.name not in ("methods", "models")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_the_package_has_no_import_cycles():
    import subprocess

    tool = ROOT.parent / "shared" / "tools" / "import_cycles.py"
    out = subprocess.run([sys.executable, str(tool), str(ROOT / "bnnkit")], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1].startswith("cycles: 0"), out.stdout
