"""The content digest vocwatch writes in the ledger and its Idempotency-Key, computed here on its own (not
through vocwatch.edges.digest), so tests compare the ledger against an independent oracle."""

from __future__ import annotations

import blake3


def content_digest(data: bytes) -> str:
    """``blake3:<64 hex>`` of ``data``: a row's digest for a recording with these bytes."""
    return "blake3:" + blake3.blake3(data).hexdigest()
