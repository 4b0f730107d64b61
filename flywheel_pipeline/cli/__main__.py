"""``python -m flywheel_pipeline.cli``: the ``flywheel`` command."""

import sys

from flywheel_pipeline.cli import main

sys.exit(main())
