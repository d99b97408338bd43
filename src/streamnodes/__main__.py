"""Command line: ``python -m streamnodes check ROOT`` (also the ``streamnodes`` console script).

Exit codes: 0 the dataset is fine, 1 problems were found (listed on stdout), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from streamnodes.check import DEFAULT_TOLERANCE_S

    parser = argparse.ArgumentParser(
        prog="streamnodes",
        description="Tools for LeRobot v3.0 datasets streamed with streamnodes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a dataset: metadata, data files, and decodability of every episode's first and last frame",
        description=(
            "Validate a LeRobot v3.0 dataset and report every problem found (file, episode, remedy). "
            "Exit code 0: no problems; 1: problems found; 2: usage error."
        ),
    )
    check.add_argument("root", metavar="ROOT", help="dataset root: a local path or an fsspec URL")
    check.add_argument(
        "--tolerance-s",
        type=_non_negative_float,
        default=DEFAULT_TOLERANCE_S,
        metavar="X",
        help=f"largest allowed |pts - t| of a decoded frame, in seconds (default {DEFAULT_TOLERANCE_S:g}, as LeRobot)",
    )
    check.add_argument("--no-decode", action="store_true", help="skip decoding video frames")
    check.add_argument(
        "--read-rows",
        action="store_true",
        help="read every column of every episode's row group, not only the timestamp column needed to decode",
    )
    check.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    check.add_argument("--verbose", "-v", action="store_true", help="log diagnostics (INFO) to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 after --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        from streamnodes.check import check_dataset

        report = check_dataset(
            args.root,
            tolerance_s=args.tolerance_s,
            decode=not args.no_decode,
            read_rows=args.read_rows,
            progress=not args.quiet,
        )
        sys.stdout.write(report.format() + "\n")
        sys.stdout.flush()
        return EXIT_OK if report.ok else EXIT_PROBLEMS
    parser.error(f"unknown command {args.command!r}")  # unreachable: subparsers are required
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
