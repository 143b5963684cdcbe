"""`python -m defectkit ...` and `torchrun ... -m defectkit train ...`: the command line."""

import sys

from defectkit.cli import main

sys.exit(main())
