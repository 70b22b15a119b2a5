"""``vocwatch status JOB_ID``: one job's status from the API."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from vocwatch.cli.check import client_for
from vocwatch.cli.common import EX_DATAERR, EX_NOINPUT, EX_NOPERM, EX_UNAVAILABLE, settings_from
from vocwatch.core.model import AuthProblem, Rejected, Retry
from vocwatch.edges.client import JobStatus
from vocwatch.runtime.daemon import require_key


def main(args: argparse.Namespace) -> int:
    """Print the job's status as JSON (0). An unknown job is EX_NOINPUT (66): the input the command was given
    names nothing, as with a missing file; no key EX_CONFIG (78); a refused key EX_NOPERM (77); another
    refusal EX_DATAERR (65); an unreachable or failing API EX_UNAVAILABLE (69)."""
    settings = settings_from(args)
    require_key(settings)  # no key is the config's to fix (78, where it looked), not a key the API refused
    with contextlib.closing(client_for(settings)) as client:
        outcome = client.job_status(args.job_id)
    if isinstance(outcome, JobStatus):
        print(json.dumps(dict(outcome.raw), indent=2))
        return 0
    if isinstance(outcome, Rejected) and outcome.status == 404:
        print(
            f"vocwatch: job {args.job_id} not found at {settings.api.base_url} for tenant {settings.api.tenant_id} "
            f"(HTTP 404 {outcome.code}: {outcome.message}); check the id with 'vocwatch ledger show {args.job_id}'",
            file=sys.stderr,
        )
        return EX_NOINPUT
    if isinstance(outcome, AuthProblem):
        print(
            f"vocwatch: job {args.job_id}: the API refused the key (HTTP {outcome.status} {outcome.message}); "
            "check the API key, api.tenant_id and api.base_url",
            file=sys.stderr,
        )
        return EX_NOPERM
    if isinstance(outcome, Rejected):  # a refusal of the request itself: another try will not help
        print(
            f"vocwatch: job {args.job_id}: the API refused the request (HTTP {outcome.status} {outcome.code}: "
            f"{outcome.message}); check the id with 'vocwatch ledger show {args.job_id}'",
            file=sys.stderr,
        )
        return EX_DATAERR
    reason = outcome.reason if isinstance(outcome, Retry) else str(outcome)
    print(
        f"vocwatch: job {args.job_id}: the API could not answer ({reason}); try again later, "
        f"or check api.base_url ({settings.api.base_url})",
        file=sys.stderr,
    )
    return EX_UNAVAILABLE
