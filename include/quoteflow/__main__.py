"""The quoteflow command line: ``quoteflow <command> ...`` (or ``python -m quoteflow``).

Producer commands (``serve-feed``, ``produce``) live in :mod:`quoteflow.cli_producer`;
indexer commands (``setup``, ``index``, ``backfill``, ``reconcile``, ``dlq``) in
:mod:`quoteflow.cli_indexer`. Each module exposes ``register(subparsers)``; every
subcommand sets ``func(args) -> int`` (the exit status) and prints a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from quoteflow import cli_indexer, cli_producer
from quoteflow.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="quoteflow", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_producer.register(subparsers)
    cli_indexer.register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
