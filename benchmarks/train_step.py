"""Training and evaluation throughput, binary vs float (see bnnkit/bench.py). Same as `bnnkit bench`."""
import sys

from bnnkit.analysis.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
