"""``python -m rtc_recorder serve``."""

import sys

from .cli import main

sys.exit(main())
