"""Session fixtures for the data tests: the CIFAR-10 tarball from ../shared, partly unpacked once."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

CIFAR10_TARBALL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_SHA256 = "31c4097c560691251907834f2217db3593c3f22e8456cf9571d1e8016e7c03df"
CIFAR10_TRAIN_PER_CLASS = 200  # train/<class>/0000.jpg .. 0199.jpg are unpacked; test/ is unpacked whole


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """`<tmp>/cifar10-jpeg`: the whole test/ split (10,000 images) and the first 200 train images a class.

    Writing all 60,000 small files costs 15-50 s on a busy CI disk; the tests need only these 12,000.
    CI always has the tarball beside the repository, so a missing or altered one fails, never skips.
    """
    if not CIFAR10_TARBALL.is_file():
        pytest.fail(f"{CIFAR10_TARBALL} not found: the data tests need ../shared/data/cifar10-jpeg.tar.gz beside the repo")
    digest = hashlib.sha256(CIFAR10_TARBALL.read_bytes()).hexdigest()
    if digest != CIFAR10_SHA256:
        pytest.fail(f"{CIFAR10_TARBALL} has sha256 {digest}, expected {CIFAR10_SHA256}: restore the original file")
    out = tmp_path_factory.mktemp("cifar10")
    if shutil.which("tar"):  # GNU tar: about 3x faster than tarfile
        subprocess.run(["tar", "xzf", str(CIFAR10_TARBALL), "-C", str(out), "--wildcards", "cifar10-jpeg/test/*",
                        "cifar10-jpeg/train/*/0[01]??.jpg"], check=True)
    else:
        wanted = re.compile(r"cifar10-jpeg/(test/|train/[a-z]+/0[01]\d\d\.jpg$)")
        with tarfile.open(CIFAR10_TARBALL) as tar:
            tar.extractall(out, members=[m for m in tar if wanted.match(m.name)], filter="data")
    return out / "cifar10-jpeg"
