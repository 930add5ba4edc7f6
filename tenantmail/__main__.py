"""`python -m tenantmail`: the command line."""

import sys

from tenantmail.cli import main

sys.exit(main())
