"""The same content, as a table: a BLAKE3 digest (``blake3:<hex>``), an earlier version's bare sha256, or none;
and the journey's decisions over rows of both formats."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.test_journey import ME, OTHER, row
from vocwatch.core.content import Content, Scheme, needs_sha256, recorded, same, scheme
from vocwatch.core.journey import (
    Conflict,
    Duplicate,
    FinishMove,
    LoneSeen,
    OnConflict,
    Seen,
    Upload,
    decide,
    decide_lone,
)
from vocwatch.core.states import State

B3, B3_OTHER = "blake3:" + "1" * 64, "blake3:" + "2" * 64
SHA, SHA_OTHER = "a" * 64, "b" * 64
HASHED = Content(B3)  # the common path: no legacy row, no sha256
BOTH = Content(B3, SHA)  # a legacy row of this id was found: the file's sha256 too

SCHEMES = [(B3, Scheme.BLAKE3), (SHA, Scheme.SHA256), ("", Scheme.NONE)]


@pytest.mark.parametrize(("stored", "kind"), SCHEMES)
def test_a_stored_digest_says_its_own_format(stored: str, kind: Scheme) -> None:
    assert scheme(stored) == kind


SAME = [
    # (stored in the row, what the file hashed to) -> same content?
    (B3, HASHED, True),
    (B3, BOTH, True),
    (B3_OTHER, HASHED, False),
    (B3_OTHER, BOTH, False),
    (SHA, BOTH, True),  # a row from before the upgrade: the same recording
    (SHA_OTHER, BOTH, False),  # same id, other content: not the same
    ("", HASHED, False),  # a failure decided before the content was read
    ("", BOTH, False),
    (B3.removeprefix("blake3:"), Content(B3, "0" * 64), False),  # a bare hex is a sha256, never a BLAKE3
]


@pytest.mark.parametrize(("stored", "content", "expected"), SAME)
def test_same_content(stored: str, content: Content, expected: bool) -> None:
    assert same(stored, content) is expected


def test_a_legacy_row_without_the_files_sha256_is_a_bug_not_a_new_recording() -> None:
    with pytest.raises(ValueError, match="needs_sha256"):
        same(SHA, HASHED)


@pytest.mark.parametrize(
    ("stored", "needed"),
    [([], False), ([B3], False), ([B3, B3_OTHER, ""], False), ([B3, SHA], True), ([SHA_OTHER], True)],
)
def test_sha256_is_computed_only_when_a_row_holds_one(stored: list[str], needed: bool) -> None:
    assert needs_sha256(stored) is needed


RECORDED = [
    # (the taken row's digest, the file) -> what the claim writes
    (None, HASHED, B3),  # a new row
    (B3, HASHED, B3),
    (SHA, BOTH, SHA),  # an earlier version's open row keeps its digest, so its Idempotency-Key
    (SHA_OTHER, BOTH, B3),  # a released row of the same file whose content changed
    (B3_OTHER, HASHED, B3),
    ("", HASHED, B3),
]


@pytest.mark.parametrize(("stored", "content", "written"), RECORDED)
def test_what_a_claim_records(stored: str | None, content: Content, written: str) -> None:
    assert recorded(stored, content) == written


# -- the journey over a ledger written by the previous version ---------------------------------


def seen(content: Content = BOTH) -> Seen:
    return Seen("rec-1", content, "call.wav", ME, frozenset({OTHER}))


def test_accepted_under_sha256_and_dropped_again_is_a_duplicate() -> None:
    done = row(State.DONE, sha=SHA)
    step = decide([done], seen())
    assert step == Duplicate(done, None)


def test_an_uploading_row_of_the_previous_version_is_taken_and_keeps_its_digest() -> None:
    left = row(State.UPLOADING, sha=SHA, holder="host-old")
    step = decide([left], seen())
    assert step == Upload(left)
    assert recorded(left.sha256, BOTH) == SHA


@pytest.mark.parametrize("on_conflict", list(OnConflict))
def test_same_id_other_content_than_a_sha256_row_is_a_new_recording(on_conflict: OnConflict) -> None:
    """As before the upgrade: a conflict, or (upload.on_conflict = "upload") a new row; never a duplicate."""
    done = row(State.DONE, sha=SHA_OTHER)
    step = decide([done], seen(), on_conflict)
    assert step == (Conflict(("job-1",), None) if on_conflict == OnConflict.FAIL else Upload(None))


def test_blake3_and_sha256_rows_of_one_recording_side_by_side() -> None:
    """A row of each format: the sha256 one of this content, the BLAKE3 one of another."""
    rows = [row(State.DONE, sha=B3_OTHER, rid=1), replace(row(State.DONE, sha=SHA, rid=2), job_id="job-2")]
    step = decide(rows, seen())
    assert isinstance(step, Duplicate) and step.of.id == 2


def test_a_lone_half_of_a_move_the_previous_version_cut_short() -> None:
    accepted = row(State.ACCEPTED, sha=SHA)
    observed = LoneSeen("call.wav", BOTH, ME, frozenset({OTHER}))
    assert decide_lone([accepted], observed) == FinishMove(accepted)
