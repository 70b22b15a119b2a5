"""``vocwatch status JOB_ID``: one job's status from the API."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from vocwatch.cli.check import client_for
from vocwatch.cli.common import EX_UNAVAILABLE, settings_from
from vocwatch.edges.client import JobStatus


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with contextlib.closing(client_for(settings)) as client:
        outcome = client.job_status(args.job_id)
    if isinstance(outcome, JobStatus):
        print(json.dumps(dict(outcome.raw), indent=2))
        return 0
    print(f"vocwatch: job {args.job_id}: {outcome}", file=sys.stderr)
    return EX_UNAVAILABLE
