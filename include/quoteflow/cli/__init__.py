"""The quoteflow command line: ``quoteflow <command> ...`` (or ``python -m quoteflow``).

One module per job, each with ``register(subparsers)``: :mod:`~quoteflow.cli.feed` (``serve-feed``),
:mod:`~quoteflow.cli.produce`, :mod:`~quoteflow.cli.bars`, :mod:`~quoteflow.cli.setup`, :mod:`~quoteflow.cli.index`,
:mod:`~quoteflow.cli.backfill`, :mod:`~quoteflow.cli.reconcile`, :mod:`~quoteflow.cli.dlq` and
:mod:`~quoteflow.cli.maintenance`.
Every command is one call into :mod:`quoteflow.jobs` and prints a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from quoteflow.cli import backfill, bars, dlq, feed, index, maintenance, produce, reconcile, setup
from quoteflow.settings import ConfigError

COMMANDS = (feed, produce, bars, setup, index, backfill, reconcile, dlq, maintenance)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="quoteflow", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; configuration errors exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
