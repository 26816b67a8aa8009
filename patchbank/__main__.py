"""``python -m patchbank COMMAND ...``: the ``patchbank`` command."""

import sys

from patchbank.cli import main

sys.exit(main())
