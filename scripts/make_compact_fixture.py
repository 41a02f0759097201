"""Regenerate tests/fixtures/siman_resnet20_cifar10_trained.bnn, the trained model of
tests/test_deploy_compact.py: SiMaN ResNet-20 (1w1a) after 3 epochs on the full CIFAR-10 train set
(52.26 % top-1 in its run's own evaluation), from the comparison run of
recipes/compare/cifar10_all_methods.yaml, exported as a plain (bit-exact) .bnn file of about 100 KB:

    python scripts/make_compact_fixture.py /work/cmp/cifar10_all_methods/runs/siman_resnet20_1w1a_seed0/best.pt

The test compacts the plain file with the exporter's own compact_weights (on a file's graph and
tensors, as export does), so 100 KB stand in for the 3.3 MB checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

from bnnkit.deploy import export
from bnnkit.deploy._cli import load_model

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "siman_resnet20_cifar10_trained.bnn")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the trained bnnkit checkpoint (best.pt of siman_resnet20_1w1a_seed0)")
    p.add_argument("-o", "--output", default=FIXTURE)
    a = p.parse_args(argv)
    net = load_model(a.checkpoint)
    info = export(net, a.output, example_input_shape=(1, 3, 32, 32),
                  source={**net.bnnkit_spec, "trained": "3 epochs, full CIFAR-10 train set, 52.26 % top-1 (its run's eval)"})
    print(f"wrote {a.output}: {info['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
