"""The native kernels' NEON path, bit for bit against the portable one and a sign oracle, cross-compiled
for AArch64 and run under qemu-user (scripts/check_kernels_arm.sh), and the x86 paths natively.

CI installs the cross compiler and qemu; a machine without them fails here with the command that
installs them (a skip would count an untested ARM path as passing)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_kernels_arm.sh"
TOOLS = ("g++", "aarch64-linux-gnu-g++", "qemu-aarch64")


def test_kernels_bit_identical_natively_and_on_aarch64_under_qemu(tmp_path):
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the AArch64 kernel check needs them "
                    "(apt-get install g++ g++-aarch64-linux-gnu qemu-user)")
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=900)
    report = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, report
    native, arm = ((tmp_path / name).read_text() for name in ("native.txt", "aarch64.txt"))
    assert "instruction sets portable neon" in arm, report  # NEON actually ran, not only the portable path
    assert "kernel_check: ok" in native and "kernel_check: ok" in arm, report
    bconv = [line for line in arm.splitlines() if line.startswith("bconv ")]
    assert len(bconv) >= 30 and all("2/2 ISAs bit-identical" in line for line in bconv), report
    assert "with the same results" in run.stdout, report
