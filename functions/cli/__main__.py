"""`python -m functions.cli ...`: the same as the `sluice` command."""

import sys

from functions.cli.main import main

sys.exit(main())
