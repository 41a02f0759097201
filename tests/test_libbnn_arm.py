"""libbnn cross-compiled for AArch64 and run under qemu-user gives the x86 libbnn's logits on every
published model (scripts/check_libbnn_arm.py): within 1e-5 relative, the same argmax, NEON chosen
on the ARM side, and each side's portable kernels giving its auto ISA's bits.

The two CMake builds live in pytest's cache (.pytest_cache/d/libbnn-arm), so a later run only
rebuilds what changed. CI installs the cross compiler and qemu; without them this fails, not skips
(a skip would count an untested ARM path as passing)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_libbnn_arm.py"


def test_libbnn_aarch64_under_qemu_matches_x86_on_every_published_model(tmp_path, request):
    missing = [t for t in ("cmake", "c++", "aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the AArch64 libbnn check needs them "
                    "(apt-get install g++-aarch64-linux-gnu qemu-user)")
    report = tmp_path / "report.json"
    build = request.config.cache.mkdir("libbnn-arm")
    run = subprocess.run([sys.executable, str(SCRIPT), "--build", str(build), "--work", str(tmp_path),
                          "--json", str(report)], capture_output=True, text=True, timeout=1200)
    out = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, out
    rows = json.loads(report.read_text())["rows"]
    from tests.test_deploy_models import CASES
    assert sorted(r["case"] for r in rows) == sorted("-".join(c) for c in CASES), out
    for r in rows:
        assert r["rel"] < 1e-5 and r["same_argmax"], (r, out)
        assert r["isa"]["arm"] == "neon" and r["isa"]["x86_portable"] == "portable", (r, out)
        assert r["x86_portable_identical"] and r.get("arm_portable_identical", True), (r, out)
    assert sum("arm_portable_identical" in r for r in rows) > len(CASES) // 2, out
