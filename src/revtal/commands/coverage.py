"""``python -m revtal.commands.coverage [--only NAME ...]``: activation memory of each converter family at one
realistic size (:func:`revtal.bench.coverage.coverage_table`; the numbers of docs/CONVERTERS.md). Not a ``revtal``
sub-command: it builds full-size models for minutes."""

from __future__ import annotations

import argparse

from revtal.bench.coverage import coverage_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of the model names to measure")
    args = parser.parse_args(argv)
    return coverage_table(args.only)


if __name__ == "__main__":
    raise SystemExit(main())
