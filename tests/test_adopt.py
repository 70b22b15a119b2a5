"""Folders.adopt (the fleet's takeover of a gone peer's work folder) carries the peer's put-back journal."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from vocwatch.core.model import Pair
from vocwatch.edges.folders import Claimed, Folders


def _folders(root: Path, name: str) -> Folders:
    return Folders(
        inbox=root / "inbox",
        work=root / "work" / name,
        done=root / "done",
        failed=root / "failed",
        uploaded=root / "uploaded",
    )


def test_a_put_back_cut_short_at_a_gone_peer_rejoins_its_pair_after_the_takeover(tmp_path: Path) -> None:
    peer, me = _folders(tmp_path, "peer"), _folders(tmp_path, "me")
    for f in (peer, me):
        f.ensure()
    (tmp_path / "inbox").mkdir()
    pair = Pair(PurePosixPath("call.mp3"), PurePosixPath("call.json"))
    theirs = Claimed(pair, peer.work, peer.inbox)
    # The peer's put-back chose call~2 (call.* and call~1.mp3 were taken), moved the recording, then died.
    (tmp_path / "inbox" / "call.mp3").write_bytes(b"newer")
    (tmp_path / "inbox" / "call.json").write_text("{}")
    (tmp_path / "inbox" / "call~1.mp3").write_bytes(b"another")
    entry = peer._journal(theirs)
    entry.parent.mkdir(parents=True)
    entry.write_text(
        json.dumps(
            {
                str(theirs.audio): str(tmp_path / "inbox" / "call~2.mp3"),
                str(theirs.sidecar): str(tmp_path / "inbox" / "call~2.json"),
            }
        )
    )
    (tmp_path / "inbox" / "call~2.mp3").write_bytes(b"older")
    assert theirs.sidecar is not None
    theirs.sidecar.write_text('{"id": "older"}')

    assert me.adopt("peer") == (1, 0)
    assert not entry.exists()  # its files left the peer's folder: its entry went with them
    mine = Claimed(Pair(pair.audio, pair.sidecar), me.work, me.inbox, leftover=True)
    me.release(mine)
    assert (tmp_path / "inbox" / "call~2.json").read_text() == '{"id": "older"}'
    assert not (tmp_path / "inbox" / "call~1.json").exists()  # not joined to another recording
    assert (tmp_path / "inbox" / "call.json").read_text() == "{}"
    assert not list(me.work.iterdir())
    assert me.tidy_put_backs() == 0
