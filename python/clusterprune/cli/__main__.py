"""`python -m clusterprune.cli` (used by torchrun / accelerate launch)."""

import sys

from . import main

sys.exit(main())
