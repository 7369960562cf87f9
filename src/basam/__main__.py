"""``python -m basam ...``: the same as the ``basam`` command."""

import sys

from basam.cli import main

if __name__ == "__main__":
    sys.exit(main())
