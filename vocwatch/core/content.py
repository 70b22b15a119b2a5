"""Is this the same content? The one answer, over the two ways a ledger row writes its digest.

A row's digest (the ledger's ``sha256`` column, a public name kept for operators' scripts) is BLAKE3-256,
written self-describing as ``blake3:<64 hex>``. Rows written before it hold a bare sha256 hex: still the same
recording when the file's sha256 matches, so the caller hashes sha256 too, but only when a row of that
recording id carries one (``needs_sha256``), never on the common path. An empty digest is a failure decided
before the content was read: it matches no content.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

BLAKE3_PREFIX = "blake3:"


class Scheme(StrEnum):
    BLAKE3 = "blake3"  # "blake3:<hex>": this version's
    SHA256 = "sha256"  # a bare hex: a row from an earlier version
    NONE = "none"  # "": the content was never read (a failure decided before it)


def scheme(stored: str) -> Scheme:
    if not stored:
        return Scheme.NONE
    return Scheme.BLAKE3 if stored.startswith(BLAKE3_PREFIX) else Scheme.SHA256


@dataclass(frozen=True, slots=True)
class Content:
    """What a file holds, as hashed: its BLAKE3 digest (``blake3:<hex>``), and its bare sha256 hex when a
    legacy row asked for it (None: not computed, because no row needed it)."""

    blake3: str
    sha256: str | None = None


def needs_sha256(stored: Iterable[str]) -> bool:
    """True when one of these digests is an earlier version's sha256: only then is the file hashed twice."""
    return any(scheme(s) == Scheme.SHA256 for s in stored)


def same(stored: str, content: Content) -> bool:
    """Does a row's stored digest name this content? A legacy sha256 must have been computed (a caller that
    skipped it would upload a duplicate silently): asking without it is a bug, and raises."""
    kind = scheme(stored)
    if kind == Scheme.BLAKE3:
        return stored == content.blake3
    if kind == Scheme.SHA256:
        if content.sha256 is None:
            raise ValueError("a legacy sha256 row needs the file's sha256 (core.content.needs_sha256)")
        return stored == content.sha256
    return False


def recorded(stored: str | None, content: Content) -> str:
    """The digest a row claimed for this content keeps: its own when it already names this content (so a
    row an earlier version left open is sent again under the same Idempotency-Key), else the BLAKE3 one."""
    if stored is not None and same(stored, content):
        return stored
    return content.blake3
