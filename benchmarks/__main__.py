"""`python -m benchmarks SCENARIO [--reps N] [--small] [--out DIR]`: the same as `tenantmail bench`."""

import sys

from benchmarks.cli import main

sys.exit(main())
