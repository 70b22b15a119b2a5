"""``make contract-test``: Schemathesis against a real ``vocwatch simulate``, with Crescendo's contract.

Starts the simulator on a free loopback port with a fresh key, runs ``st run`` with every check (the
deviations the README explains are configured beside this file, in schemathesis.toml), and exits with
Schemathesis' status. Bounded: a fixed number of examples per operation and a time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from vocwatch.testing.samples import write_wav

HERE = Path(__file__).resolve().parent
TENANT = "tenant-alpha"  # the one tenant the simulator serves; schemathesis.toml pins tenantId to it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, required=True, help="the contract, crescendo-voc-api.yml")
    parser.add_argument("--max-examples", type=int, default=30, help="test cases per operation and phase")
    parser.add_argument("--max-time", type=int, default=60, help="seconds for the whole run at most")
    parser.add_argument("--seed", type=int, default=20261201, help="Schemathesis' seed, for a repeatable run")
    args = parser.parse_args()
    if not args.schema.is_file():
        print(
            f"contract-test: no contract at {args.schema}; it lives in ../shared beside the repository "
            "(make contract-test CONTRACT=/path/to/crescendo-voc-api.yml)",
            file=sys.stderr,
        )
        return os.EX_NOINPUT
    key = "contract-" + secrets.token_urlsafe(12)
    sim = subprocess.Popen(
        [sys.executable, "-m", "vocwatch", "simulate", "--port", "0", "--tenant", TENANT, "--complete-after", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "VOCWATCH_API_KEY": key},
    )
    try:
        assert sim.stdout is not None
        url = json.loads(sim.stdout.readline())["url"]
        scratch = tempfile.TemporaryDirectory(prefix="contract-")
        config = Path(scratch.name) / "schemathesis.toml"
        config.write_text((HERE / "schemathesis.toml").read_text() + _status_of(_a_job(url, key)))
        st = Path(sys.executable).with_name("st")
        command = [
            str(st),
            "--config-file",
            str(config),
            "run",
            str(args.schema.resolve()),
            "--url",
            url,
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            str(args.max_examples),
            "--max-time",
            str(args.max_time),
            "--seed",
            str(args.seed),
            "--workers",
            "2",
        ]
        with scratch:  # its working folder too: Schemathesis keeps a cache (.schemathesis/) where it runs
            return subprocess.call(command, cwd=scratch.name)
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        if sim.stdout is not None:
            sim.stdout.close()


def _a_job(url: str, key: str) -> str:
    """Upload one real WAV the way the upload page shows; the job id it gets."""
    with tempfile.TemporaryDirectory() as folder:
        wav = write_wav(Path(folder) / "contract.wav", 0.5)
        reply = httpx.post(
            f"{url}/api/v1/voc/tenants/{TENANT}/recording",
            headers={"Authorization": f"Bearer {key}"},
            data={"metadata": json.dumps({"id": "contract-1", "kind": "phonecall"})},
            files={"audio": ("contract.wav", wav.read_bytes(), "audio/wav")},
        )
    reply.raise_for_status()
    return str(reply.json()["id"])


def _status_of(job_id: str) -> str:
    # The status operation asks after a job that exists, so its 200 replies are checked too, not only 404s.
    return f'''
[[operations]]
include-operation-id = "getVocJobStatus"
parameters = {{ "path.jobId" = "{job_id}" }}
'''


if __name__ == "__main__":
    sys.exit(main())
