"""`python -m darht ...` (also the torchrun entry point)."""

import sys

from darht.cli import main

sys.exit(main())
