"""``python -m quoteflow`` and the ``quoteflow`` console script: the command line of :mod:`quoteflow.cli`."""

from __future__ import annotations

import sys

from quoteflow.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
