"""CLI: `aape doctor` checks every store and cache under a home and quarantines damaged files."""

from __future__ import annotations

import argparse
import json
import sys

from aape.cli.common import add_home, command

# Exit status when damaged files remain (2 stays the status of a usage or environment error).
FINDINGS_EXIT = 1


def run(args: argparse.Namespace) -> int:
    from aape.doctor import run_doctor

    report = run_doctor(args.home, quarantine=args.quarantine)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for finding in report.findings:
            print(finding.line())
        print(report.summary())
    return FINDINGS_EXIT if report.remaining else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommand to `sub`."""
    p = command(
        sub,
        "doctor",
        help="check the bank store (caption bank included), feature cache, few-shot manifests, "
        "runs and artifacts of a home; exit 1 while damaged files remain",
        examples="""
            aape doctor --home ./aape-data                # one line per damaged file
            aape doctor --home ./aape-data --quarantine   # salvage good rows, move the rest aside
            aape doctor --home s3://bucket/aape --json
        """,
    )
    add_home(p)
    p.add_argument(
        "--quarantine",
        action="store_true",
        help="move each damaged file to <home>/quarantine/<UTC time>/<its path>, after writing "
        "its still-readable rows to a new part",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
