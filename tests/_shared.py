"""Where ../shared lies for the tests: beside the repository, as in CI."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN_DIR = SHARED / "fixtures" / "reference"
CIFAR10_TARBALL = SHARED / "data" / "cifar10-jpeg.tar.gz"
