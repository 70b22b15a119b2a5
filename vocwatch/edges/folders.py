"""The spool folders: claim a pair into work/, then move it to done/, uploaded/ or failed/.

Every move is a rename (or link + unlink, which never overwrites), followed by an fsync of the
directories, so a crash leaves each file in exactly one place and a name is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vocwatch.core.audio import Seen
from vocwatch.core.model import Pair
from vocwatch.core.pairing import classify
from vocwatch.core.states import Stage
from vocwatch.edges.effects import Effect, point
from vocwatch.edges.moves import (
    _forget_journal,
    _fsync_dirs,
    _move_no_clobber,
    _read_journal,
    _rename,
    _taken,
    _write_atomic,
    _write_journal,
    walk_files,
)
from vocwatch.edges.names import ERROR_TAIL, _error_name, _pair_names, _suffix_of, _with_suffix_n

__all__ = ["Claimed", "Folders", "walk_files"]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pair renamed into this daemon's work folder; ``origin`` is where it came from."""

    pair: Pair
    root: Path
    origin: Path
    # Found in work/ (a crash's or a stopped run's leftover), not claimed from the inbox by this run: its
    # ledger row may be past the point where the inbox may have it back (accepted: the job id is durable).
    leftover: bool = False
    # The planner's structural verdict on the recording as it claimed it: the worker uses it instead of
    # reading the headers again while the recording's signature is still the one it was made on.
    seen: Seen | None = None

    @property
    def audio(self) -> Path:
        return self.root / self.pair.audio

    @property
    def sidecar(self) -> Path | None:
        return self.root / self.pair.sidecar if self.pair.sidecar is not None else None

    def paths(self) -> list[Path]:
        return [p for p in (self.audio, self.sidecar) if p is not None]


class Folders:
    """Owns every rename between inbox, work, done, uploaded and failed."""

    def __init__(self, *, inbox: Path, work: Path, done: Path, failed: Path, uploaded: Path) -> None:
        self.inbox = inbox
        self.work = work
        self.stages: dict[Stage, Path] = {Stage.DONE: done, Stage.FAILED: failed, Stage.UPLOADED: uploaded}
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        """Create our own folders. Not the inbox: a missing inbox may be a share that is not mounted,
        and a local folder in its place would hide that (the watcher reports it until it appears)."""
        for folder in (self.work, *self.stages.values()):
            folder.mkdir(parents=True, exist_ok=True)

    def claim(self, pair: Pair, origin: Path | None = None) -> Claimed | None:
        """Rename the pair from ``origin`` (the inbox) into work/; None if another took it first."""
        origin = origin or self.inbox
        claimed = Claimed(pair, self.work, origin)
        sources = [origin / pair.audio] + ([origin / pair.sidecar] if pair.sidecar else [])
        if any(os.path.lexists(target) for target in claimed.paths()):
            return None  # an earlier pair of the same name is still in flight; take this one later
        moved: list[tuple[Path, Path]] = []
        # The sidecar first: a claim cut short by a crash leaves a lone sidecar in work/, which goes back
        # to the inbox, never a lone recording, which could be taken for one sent alone (require_sidecar
        # = false) or for the half of a move to done/ (where the sidecar leads).
        for src, dst in reversed(list(zip(sources, claimed.paths(), strict=True))):
            try:
                _rename(src, dst)
            except FileNotFoundError:
                for back_src, back_dst in reversed(moved):
                    _rename(back_dst, back_src)
                return None
            moved.append((src, dst))
        # No fsync here: a claim lost to a power cut leaves the pair in the inbox to be claimed again, and
        # the ledger then knows it (duplicate or resend), so durability is bought at finish() instead.
        return claimed

    def lock(self) -> bool:
        """Take this instance's work folder for this process alone; False if another process holds it.

        Without it a second process with the same instance (a backfill next to the daemon, a second
        daemon on the same ledger) would take the other's claims for crash leftovers.
        """
        self.work.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until unlock() or the process exits
        return True

    def holder_alive(self, holder: str) -> bool:
        """Does a live process hold the work folder ``holder`` (a ledger row's holder)? Asked by trying
        its lock: the holder keeps it from start to exit, and the kernel drops it when the process dies."""
        if holder == self.work.name and self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.work.parent / holder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False  # no such work folder here: not a process on this host and share
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's lock, if it got one
        return False

    def stage_of(self, path: Path) -> Stage | None:
        """The stage folder ``path`` lies in, if any."""
        for stage, root in self.stages.items():
            if path.is_relative_to(root):
                return stage
        return None

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def forget_copies(self, claimed: Claimed, destination: Path) -> None:
        """Unlink work/ names that are hard links of files already at ``destination`` (and its sidecar)."""
        for path in claimed.paths():
            for there in (
                destination,
                *destination.parent.glob(glob.escape(PurePosixPath(destination.name).stem) + "*.json"),
            ):
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.lstat(path), os.lstat(there)):
                        point(Effect.UNLINK, path)
                        os.unlink(path)
                        break

    def exists(self, claimed: Claimed) -> bool:
        return all(os.path.lexists(p) for p in claimed.paths())

    def remove(self, claimed: Claimed) -> None:
        """Delete the pair for good (folders.done_action = "delete"), the sidecar first: a crash in between
        leaves the recording, which its ledger row recognises and deletes at the next start."""
        for path in [p for p in (claimed.sidecar, claimed.audio) if p is not None]:
            if os.path.lexists(path):
                point(Effect.UNLINK, path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        _fsync_dirs({p.parent for p in claimed.paths()})

    def release(self, claimed: Claimed) -> None:
        """Put a claimed pair back where it came from, to be taken again later: under its own names, or
        under one ``~N`` suffix free for both, so that a newer file of the same name never joins it.

        The names chosen are journalled first (beside the work folder): a put-back cut short by a crash is
        finished under the same names by the next start, so its second half still finds the first.
        """
        present = [p for p in claimed.paths() if os.path.lexists(p)]
        journal = self._journal(claimed)
        planned = _read_journal(journal)
        taken = planned is not None and any(_taken(p, Path(planned.get(str(p), p))) for p in present)
        if planned is not None and not taken and all(str(p) in planned for p in present):
            for path in present:
                _move_no_clobber(path, Path(planned[str(path)]))
            _fsync_dirs({p.parent for p in claimed.paths()} | {Path(t).parent for t in planned.values()})
            _forget_journal(journal)
            return
        # The recording first: a put-back cut short leaves a lone sidecar in work/ (and the journal).
        target = claimed.origin / claimed.pair.audio
        for n in range(0, 10_000):
            names = _pair_names(target, claimed.pair, n)
            back = {claimed.audio: names["audio"]}
            if claimed.sidecar is not None:
                back[claimed.sidecar] = names["sidecar"]
            if any(os.path.lexists(back[p]) for p in present):
                continue
            if claimed.sidecar is not None and n > 0:
                _write_journal(journal, {str(src): str(dst) for src, dst in back.items()})
            moved: list[tuple[Path, Path]] = []
            try:
                for path in present:
                    _move_no_clobber(path, back[path])
                    moved.append((path, back[path]))
            except FileExistsError:  # a producer took one of the names meanwhile: undo, try the next
                for src, dst in reversed(moved):
                    _move_no_clobber(dst, src)
                continue
            break
        else:
            raise FileExistsError(errno.EEXIST, "10000 names taken", str(target))
        _fsync_dirs({p.parent for p in claimed.paths()} | {target.parent})
        _forget_journal(journal)

    def tidy_put_backs(self) -> int:
        """At start: drop journal entries none of whose files is still in work/ (the put-back finished, and
        only the entry's removal was lost). Returns how many were dropped."""
        folder = self.work.parent / f".{self.work.name}.putback"
        dropped = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                planned = _read_journal(entry)
                if planned is None or not any(os.path.lexists(src) for src in planned):
                    _forget_journal(entry)
                    dropped += 1
        return dropped

    def forget_put_back(self, claimed: Claimed) -> None:
        """A whole pair in work/: no half of a put-back moved, so a journal entry of its names is stale."""
        _forget_journal(self._journal(claimed))

    def _journal(self, claimed: Claimed) -> Path:
        # One entry per pair group (the path without its pair suffix), which both halves share.
        key = str(claimed.pair.audio.parent / classify(claimed.pair.audio.name)[1])
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.work.parent / f".{self.work.name}.putback" / f"{digest}.json"

    def finish_put_back(self, claimed: Claimed) -> bool:
        """A put-back (release) that a crash cut short between a link into the inbox and the unlink from
        work/ leaves a file under both names. Finish it: True when this leftover was such a put-back, now
        wholly back in the inbox under the names it had started to take."""
        present = [p for p in claimed.paths() if os.path.lexists(p)]
        if not any(os.lstat(p).st_nlink > 1 for p in present):
            return False
        target = claimed.origin / claimed.pair.audio
        for n in range(0, 10_000):
            names = _pair_names(target, claimed.pair, n)
            back = {claimed.audio: names["audio"]}
            if claimed.sidecar is not None:
                back[claimed.sidecar] = names["sidecar"]
            if not any(os.path.lexists(there) for there in back.values()):
                return False  # past the last name taken: none of them is this pair's
            if any(os.path.lexists(back[p]) and os.path.samestat(os.lstat(p), os.lstat(back[p])) for p in present):
                break
        else:
            return False
        for path in present:
            _move_no_clobber(path, back[path])  # the same file there: only the work/ name is unlinked
        _fsync_dirs({p.parent for p in claimed.paths()} | {target.parent})
        _forget_journal(self._journal(claimed))
        return True

    def plan_destination(
        self, claimed: Claimed, stage: Stage, *, with_error: bool = False, flat: bool = False, sub: str = ""
    ) -> Path:
        """Where the recording will land in ``stage``: its relative path, suffixed if taken.

        ``with_error``: an error file goes beside it, so its name must fit too; ``flat``: at the top of
        ``stage``, for a pair whose folders make the path too long there; ``sub``: a sub-folder of the stage
        (folders.done_layout).
        """
        target = self._target(claimed, stage, flat, sub)
        for n in range(0, 10_000):
            names = _pair_names(target, claimed.pair, n, with_error)
            if not any(os.path.lexists(p) for p in names.values()):
                return names["audio"]
        raise FileExistsError(f"{target}: 10000 names taken; clean up {self.stages[stage]}")

    def _target(self, claimed: Claimed, stage: Stage, flat: bool, sub: str = "") -> Path:
        root = self.stages[stage] / sub if sub else self.stages[stage]
        return root / (claimed.pair.audio.name if flat else claimed.pair.audio)

    def finish(
        self,
        claimed: Claimed,
        stage: Stage,
        destination: Path | None = None,
        error: Mapping[str, Any] | None = None,
        *,
        flat: bool = False,
        sub: str = "",
    ) -> Path:
        """Move the pair (and write its error file, if any) into ``stage``; return the audio's path."""
        with_error = error is not None
        if destination is None:
            destination = self.plan_destination(claimed, stage, with_error=with_error, flat=flat, sub=sub)
            target = self._target(claimed, stage, flat, sub)
        else:  # a planned destination names its folder (a sub-folder, flat or not): the names go there
            target = destination.parent / claimed.pair.audio.name
        n = _suffix_of(destination, target, claimed.pair, with_error)
        # A sidecar that went ahead (the recording's move failed after it, say on a full disk) is carried
        # along if the recording must take another suffix: the pair never splits across two names.
        ahead = None
        if claimed.sidecar is not None and not os.path.lexists(claimed.sidecar):
            placed = _pair_names(target, claimed.pair, n, with_error).get("sidecar")
            ahead = placed if placed is not None and os.path.lexists(placed) else None
        for _ in range(10_000):
            names = _pair_names(target, claimed.pair, n, with_error)
            if self._move_pair(claimed, names, error, ahead):
                # Only the destination is synced: if the unlink from work/ is lost to a power cut, the next
                # start finds the same file (same inode) at the recorded destination and drops the copy.
                _fsync_dirs({names["audio"].parent})
                return names["audio"]
            n += 1
        raise FileExistsError(errno.EEXIST, "10000 names taken", str(target))

    def _move_pair(
        self, claimed: Claimed, names: dict[str, Path], error: Mapping[str, Any] | None, ahead: Path | None
    ) -> bool:
        """Move the pair to ``names``; False (nothing moved) when one of them is taken by another file."""
        names["audio"].parent.mkdir(parents=True, exist_ok=True)
        # The sidecar goes first: a crash in between leaves the recording itself in work/, where the ledger's
        # row (accepted, with this destination) finishes the move.
        side = claimed.sidecar if claimed.sidecar is not None and os.path.lexists(claimed.sidecar) else ahead
        moves: list[tuple[Path, Path]] = []
        if side is not None and "sidecar" in names and side != names["sidecar"]:
            moves.append((side, names["sidecar"]))
        moves.append((claimed.audio, names["audio"]))
        if any(_taken(src, dst) for src, dst in moves):
            return False
        if error is not None and os.path.lexists(names["error"]):
            return False  # another pair's error file: never overwritten
        if error is not None:
            _write_atomic(names["error"], json.dumps(error, indent=2, ensure_ascii=False) + "\n")
        done: list[tuple[Path, Path]] = []
        try:
            for src, dst in moves:
                _move_no_clobber(src, dst)
                done.append((src, dst))
        except FileExistsError:
            for src, dst in reversed(done):  # keep the pair together under the next free suffix
                _move_no_clobber(dst, src)
            if error is not None:
                with contextlib.suppress(OSError):
                    point(Effect.UNLINK, names["error"])
                    os.unlink(names["error"])
            return False
        return True

    def with_sidecar_ahead(self, claimed: Claimed, destination: Path) -> Claimed:
        """A lone recording in work/ whose sidecar already reached ``destination``'s folder: the pair as it
        was claimed, so that finishing the move keeps them together. Unchanged if no sidecar is there."""
        if claimed.sidecar is not None:
            return claimed
        stem = PurePosixPath(destination.name).stem
        for tail in (".json", PurePosixPath(destination.name).suffix + ".json"):
            if os.path.lexists(destination.with_name(stem + tail)):
                rel = claimed.pair.audio
                sidecar = rel.with_name(PurePosixPath(rel.name).stem + tail)
                return Claimed(Pair(rel, sidecar), claimed.root, claimed.origin)
        return claimed

    def fail_in_place(
        self, origin: Path, files: Sequence[PurePosixPath], error: Mapping[str, Any], *, flat: bool = False
    ) -> list[Path]:
        """Move files that never formed a pair straight from ``origin`` to failed/, with the reason; where
        the ones that were there went (none: all gone meanwhile, and no error file is left for nothing).

        ``flat``: to the top of failed/, for files whose folders make the path too long there.
        """
        failed = self.stages[Stage.FAILED]
        places = [failed / (f.name if flat else f) for f in files]
        for n in range(0, 10_000):
            # The first file's error file shares its (possibly shortened) stem, so its name must fit as well.
            targets = [_with_suffix_n(p, n, *([ERROR_TAIL] if i == 0 else [])) for i, p in enumerate(places)]
            err = _error_name(targets[0])
            if not any(os.path.lexists(p) for p in [*targets, err]):
                break
        err.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(err, json.dumps(error, indent=2, ensure_ascii=False) + "\n")
        moved: list[Path] = []
        for rel, target in zip(files, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _move_no_clobber(origin / rel, target)
            except FileNotFoundError:
                continue  # taken meanwhile (another daemon on a shared inbox, or the producer)
            moved.append(target)
        # The reason file is another process's too when it chose these names first and moved the files there.
        if not moved and not any(os.path.lexists(t) for t in targets):
            err.unlink(missing_ok=True)
        _fsync_dirs({t.parent for t in targets} | {(origin / f).parent for f in files})
        return moved

    def claims_in_work(self, require_sidecar: bool = True) -> Iterator[tuple[Claimed, bool]]:
        """What lies in work/ (left by a crash or a stopped upload), each with whether it is a whole pair.

        A lone half (its partner already moved on, or never claimed) should go back to the inbox.
        """
        groups: dict[tuple[str, str], list[PurePosixPath]] = {}
        for dirpath, files in walk_files(self.work):
            for name in files:
                rel = PurePosixPath(Path(dirpath, name).relative_to(self.work).as_posix())
                groups.setdefault((str(rel.parent), classify(name)[1]), []).append(rel)
        for members in groups.values():
            audio = [m for m in members if classify(m.name)[0] != "sidecar"]
            sidecars = [m for m in members if classify(m.name)[0] == "sidecar"]
            if len(audio) == 1 and len(sidecars) <= 1 and (sidecars or not require_sidecar):
                pair = Pair(audio[0], sidecars[0] if sidecars else None)
                yield Claimed(pair, self.work, self.inbox, leftover=True), True
            else:
                for rel in members:
                    yield Claimed(Pair(rel, None), self.work, self.inbox, leftover=True), False

    def adopt(self, holder: str) -> tuple[int, int]:
        """Take the pairs of the gone process ``holder`` into this work folder, each at the same relative
        name (the name its ledger rows know), sidecar first as a claim does. A name already taken here is
        left where it is for a later pass. Returns (files moved, files left)."""
        theirs = self.work.parent / holder
        if holder == self.work.name or not theirs.is_dir():
            return 0, 0
        moved = left = 0
        # Their put-back journal comes along first (a put-back cut short there rejoins its pair here); an
        # entry is dropped from their folder only once its files moved, so a crash between keeps it.
        journal = self.work.parent / f".{holder}.putback"
        carried = self._adopt_put_backs(theirs, journal)
        names = [Path(d, n) for d, files in walk_files(theirs) for n in files]
        names.sort(key=lambda p: (classify(p.name)[0] != "sidecar", str(p)))
        targets: set[Path] = set()
        for src in names:
            dst = self.work / src.relative_to(theirs)
            if os.path.lexists(dst):
                left += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            point(Effect.RENAME, dst)
            os.rename(src, dst)  # one share, so one filesystem (check_layout)
            targets.add(dst.parent)
            moved += 1
        _fsync_dirs(targets | {p.parent for p in names})
        for entry in carried:
            planned = _read_journal(entry) or {}
            if not any(os.path.lexists(src) for src in planned):
                _forget_journal(entry)
        return moved, left

    def _adopt_put_backs(self, theirs: Path, journal: Path) -> list[Path]:
        """Copy ``theirs``' put-back journal entries into this work folder's, their names rewritten to it;
        returns their entries, to drop once none of their files is left there."""
        mine = self.work.parent / f".{self.work.name}.putback"
        entries: list[Path] = []
        with contextlib.suppress(FileNotFoundError):
            entries = sorted(journal.iterdir())
        for entry in entries:
            planned = _read_journal(entry)
            if planned is None or os.path.lexists(mine / entry.name):
                continue
            moves = {}
            for src, dst in planned.items():
                try:
                    moves[str(self.work / Path(src).relative_to(theirs))] = dst
                except ValueError:
                    moves[src] = dst
            _write_journal(mine / entry.name, moves)
        return entries
