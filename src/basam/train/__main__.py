"""``python -m basam.train ...`` and ``torchrun ... -m basam.train ...``: the same as ``basam train``."""

import sys

if __name__ == "__main__":
    from basam.cli import main  # the command line owns argument parsing; the library never imports it

    sys.exit(main(["train", *sys.argv[1:]]))
