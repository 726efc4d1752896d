"""Run the app with ``python -m explorer``."""

import sys

from .app import main

sys.exit(main())
