"""The minimal Python uploader a developer would write: httpx and ThreadPoolExecutor, nothing else.

Usage: python -m bench.httpx_baseline URL KEY LIST.tsv WORKERS, where each line of LIST.tsv is
``audio<TAB>sidecar<TAB>content-type``. Exits 1 if any upload was not answered 202.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def main() -> int:
    url, key, listing, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    jobs = [line.split("\t") for line in listing.read_text().splitlines() if line]
    client = httpx.Client(
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=workers),
        timeout=120,
    )

    def send(job: list[str]) -> bool:
        audio, sidecar, ctype = job
        with open(audio, "rb") as fh:
            response = client.post(
                url,
                data={"metadata": Path(sidecar).read_text()},
                files={"audio": (Path(audio).name, fh, ctype)},
            )
        return response.status_code == 202

    with client, ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(send, jobs))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
