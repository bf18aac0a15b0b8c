"""``python -m flashgate``: the ``flashgate`` command."""

import sys

from flashgate.cli import main

sys.exit(main())
