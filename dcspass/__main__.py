"""``python -m dcspass plan|evaluate ...``: the command line of ``dcspass.cli``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
