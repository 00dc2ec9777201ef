"""``python -m deepkd``: the ``deepkd`` command line (see :mod:`deepkd.cli`)."""

import sys

from deepkd.cli import main

if __name__ == "__main__":
    sys.exit(main())
