"""`python -m bnnkit ...` runs the bnnkit command line."""
import sys

from .cli import main

sys.exit(main())
