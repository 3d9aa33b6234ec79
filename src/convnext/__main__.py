"""``python -m convnext <verb> ...``: the same command line as the ``convnext`` script."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
