"""``python -m basam.train ...`` and ``torchrun ... -m basam.train ...``: the same as ``basam train``."""

import sys

from basam.train import main

if __name__ == "__main__":
    sys.exit(main())
