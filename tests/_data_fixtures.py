"""Session fixtures for the data tests: the CIFAR-10 tarball from ../shared, unpacked once."""
from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

CIFAR10_TARBALL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_SHA256 = "31c4097c560691251907834f2217db3593c3f22e8456cf9571d1e8016e7c03df"


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """`<tmp>/cifar10-jpeg` (train/<class>/*.jpg, test/<class>/*.jpg), unpacked from ../shared/data.

    CI always has the tarball beside the repository, so a missing or altered one fails, never skips.
    """
    if not CIFAR10_TARBALL.is_file():
        pytest.fail(f"{CIFAR10_TARBALL} not found: the data tests need ../shared/data/cifar10-jpeg.tar.gz beside the repo")
    digest = hashlib.sha256(CIFAR10_TARBALL.read_bytes()).hexdigest()
    if digest != CIFAR10_SHA256:
        pytest.fail(f"{CIFAR10_TARBALL} has sha256 {digest}, expected {CIFAR10_SHA256}: restore the original file")
    out = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR10_TARBALL) as tar:
        tar.extractall(out, filter="data")
    return out / "cifar10-jpeg"
