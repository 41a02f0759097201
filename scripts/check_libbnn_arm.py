"""libbnn on AArch64 against libbnn on this x86 machine, model by model (#25 item 3).

Builds bnnrun natively and cross-compiled for AArch64 (static, NEON kernels), exports every
published model once (tests/test_deploy_models.py's CASES and build(), the step-2 ReActNet
models among them), runs each file on the same input .npy with the x86 bnnrun and with the AArch64 bnnrun
under qemu-aarch64, and compares the logits: within 1e-5 relative (max |arm - x86| / max |x86|)
and the same argmax. Each side also runs BNN_ISA=portable (on AArch64 for the CIFAR models and one
ImageNet model: qemu is slow), which must give its auto ISA's bits. Nothing is timed: qemu's
speed says nothing about an ARM CPU's.

usage: python scripts/check_libbnn_arm.py [--build DIR] [--work DIR] [--json PATH] [--only SUBSTR]
  --build  where the two CMake builds live (reused: an up-to-date build costs seconds)
  --work   where the .bnn files, inputs and logits go (default: a temporary directory)
Exit status 0 when every model passes, 1 when one does not, 2 when a tool is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install g++-aarch64-linux-gnu qemu-user"
TOLERANCE = 1e-5
SHAPES = {"cifar10": (2, 3, 32, 32), "imagenet": (1, 3, 224, 224)}
# ImageNet models whose AArch64 portable run is also compared (each costs ~10 s under qemu)
ARM_PORTABLE_IMAGENET = {("resnet18_1w1a", "siman", "imagenet")}


def fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def check_tools() -> str:
    missing = [t for t in ("cmake", "c++", "aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        fail(f"{', '.join(missing)} not found; install the AArch64 cross compiler and qemu-user ({INSTALL})")
    return shutil.which("qemu-aarch64")


def cmake_build(build: Path, *cross_args: str) -> Path:
    """bnnrun in `build` (configured once, then rebuilt only where a source changed)."""
    if not (build / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(ROOT / "runtime"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        *cross_args], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "bnnrun"], check=True,
                   stdout=subprocess.DEVNULL)
    return build / "bnnrun"


def cases(only: str | None) -> list[tuple[str, str, str]]:
    from tests.test_deploy_models import CASES
    return [c for c in CASES if only is None or only in "-".join(c)]


def run(bnnrun: list[str], model: Path, x: Path, out: Path, isa: str | None) -> str:
    """Runs one bnnrun and returns the ISA it reports."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BNN_ISA", None)
    if isa:
        env["BNN_ISA"] = isa
    done = subprocess.run([*bnnrun, str(model), str(x), "-o", str(out), "--threads", "1", "--verbose"],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(bnnrun)} {model.name}: {done.stderr.strip()}")
    return done.stderr.strip().rsplit("isa ", 1)[-1]


def compare(ref, out) -> dict:
    import numpy as np
    return {"rel": float(np.abs(out - ref).max() / np.abs(ref).max()), "identical": bool(np.array_equal(out, ref)),
            "same_argmax": bool((out.argmax(1) == ref.argmax(1)).all())}


def check(case: tuple[str, str, str], model: Path, x: Path, x86: list[str], arm: list[str], work: Path) -> dict:
    import numpy as np
    stem = work / model.stem
    sides = {"x86": (x86, None), "x86_portable": (x86, "portable"), "arm": (arm, None)}
    if case[2] == "cifar10" or case in ARM_PORTABLE_IMAGENET:
        sides["arm_portable"] = (arm, "portable")
    isas, logits = {}, {}
    for side, (cmd, isa) in sides.items():
        isas[side] = run(cmd, model, x, Path(f"{stem}.{side}.npy"), isa)
        logits[side] = np.load(f"{stem}.{side}.npy")
    row = {"case": "-".join(case), "isa": isas, **compare(logits["x86"], logits["arm"])}
    row["x86_portable_identical"] = compare(logits["x86"], logits["x86_portable"])["identical"]
    if "arm_portable" in logits:
        row["arm_portable_identical"] = compare(logits["arm"], logits["arm_portable"])["identical"]
    row["ok"] = (row["rel"] < TOLERANCE and row["same_argmax"] and row["x86_portable_identical"]
                 and row.get("arm_portable_identical", True) and isas["arm"] == "neon"
                 and "portable" == isas["x86_portable"] == isas.get("arm_portable", "portable"))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", type=Path, default=ROOT / "build" / "libbnn-arm")
    p.add_argument("--work", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", help="only the cases whose name-method-dataset contains this")
    args = p.parse_args()
    qemu = check_tools()
    started = time.monotonic()
    x86_bin = cmake_build(args.build / "x86")
    arm_bin = cmake_build(args.build / "aarch64", f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}",
                           "-DBNN_STATIC=ON")  # static: qemu-aarch64 needs no sysroot
    built = time.monotonic() - started

    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from bnnkit import deploy
    from tests.test_deploy_models import build  # the models and weights the deploy tests export
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="libbnn-arm-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for dataset, shape in SHAPES.items():
        inputs[dataset] = work / f"input-{dataset}.npy"
        np.save(inputs[dataset], torch.randn(*shape, generator=torch.Generator().manual_seed(1)).numpy())

    rows, failures = [], []
    # the main thread exports while two workers run the previous files (qemu dominates)
    with ThreadPoolExecutor(2) as pool:
        futures = []
        for case in cases(args.only):
            name, method, dataset = case
            path = work / f"{name}-{method}-{dataset}.bnn"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights exactly 0 are handled by the exporter
                deploy.export(build(*case), path, example_input_shape=SHAPES[dataset])
            futures.append((case, pool.submit(check, case, path, inputs[dataset], [str(x86_bin)],
                                              [qemu, str(arm_bin)], work)))
        for case, future in futures:
            try:
                rows.append(future.result())
            except Exception as e:  # one broken model must not hide the others' results
                rows.append({"case": "-".join(case), "ok": False, "error": str(e)})
    elapsed = time.monotonic() - started

    print(f"{'model-method-dataset':42} {'max rel':>9} {'bits':>9} argmax  isa x86/arm  portable=auto x86/arm")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:42} ERROR {r['error']}")
            failures.append(r["case"])
            continue
        isa = f"{r['isa']['x86']}/{r['isa']['arm']}"
        port = f"{r['x86_portable_identical']}/{r.get('arm_portable_identical', '-')}"
        print(f"{r['case']:42} {r['rel']:9.2e} {'identical' if r['identical'] else 'differ':>9} "
              f"{'same' if r['same_argmax'] else 'DIFF':6} {isa:14} {port}{'' if r['ok'] else '  FAIL'}")
        if not r["ok"]:
            failures.append(r["case"])
    print(f"{len(rows)} models, {len(rows) - len(failures)} pass; build {built:.0f} s, total {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "build_s": built, "total_s": elapsed}, indent=1))
    if failures:
        print(f"FAIL: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
