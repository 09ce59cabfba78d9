"""``python -m segfuse``: the same as the ``segfuse`` console script."""

from __future__ import annotations

import sys

from segfuse.cli import main

if __name__ == "__main__":
    sys.exit(main())
