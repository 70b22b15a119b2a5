"""The file primitives every move is made of: a rename, or a link then an unlink that never overwrites,
atomic writes, directory fsyncs, the put-back journal. Each effect is announced at the effect seam first."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vocwatch.edges.effects import Effect, point
from vocwatch.edges.groupsync import FolderSyncs
from vocwatch.edges.names import _fitting_temp


def walk_files(top: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, the names of its files) for ``top`` and every folder below it, as os.walk lists them but
    without recursion (before Python 3.12 os.walk recurses once per level: a deep tree raised RecursionError).
    Links to folders are not followed."""
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        files: list[str] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    if not is_dir:
                        files.append(entry.name)
                    elif not entry.is_symlink():
                        stack.append(entry.path)
        except OSError:
            continue
        yield folder, files


def _read_journal(path: Path) -> dict[str, str] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_journal(path: Path, moves: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    point(Effect.WRITE, path)
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as fh:
        json.dump(moves, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dirs({path.parent})


def _forget_journal(path: Path) -> None:
    if os.path.lexists(path):
        point(Effect.UNLINK, path)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _taken(src: Path, dst: Path) -> bool:
    """Is ``dst`` another file than ``src``? The same file there is a move a crash cut short."""
    try:
        there = os.lstat(dst)
    except FileNotFoundError:
        return False
    try:
        return not os.path.samestat(os.lstat(src), there)
    except FileNotFoundError:
        return True


def _rename(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        point(Effect.RENAME, dst)
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _move_no_clobber(src, dst)


def _move_no_clobber(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, never replacing an existing ``dst`` (FileExistsError instead; FileNotFoundError
    when ``src`` is gone before anything was placed at ``dst``).

    A hard link then unlink is atomic and refuses to overwrite; across filesystems the copy is
    fsynced before the source is deleted, so a crash or a full disk leaves at least one copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        point(Effect.LINK, dst)
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        if os.path.lexists(src) and os.path.samestat(os.lstat(src), os.lstat(dst)):
            point(Effect.UNLINK, src)
            os.unlink(src)  # a crash fell between link and unlink last time
            return
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_then_unlink(src, dst)
            return
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES):
            raise
        # A filesystem without hard links (some SMB/FAT mounts): check, then rename.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", str(dst)) from exc
        point(Effect.RENAME, dst)
        os.rename(src, dst)
        return
    point(Effect.UNLINK, src)
    # Gone since the link (another daemon on a shared inbox moved it too): the move is done all the same,
    # the link made here holds it. Raising would tell the caller nothing had moved, about a file it placed.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(src)


def _copy_then_unlink(src: Path, dst: Path) -> None:
    tmp = _fitting_temp(dst, "vocwatch-copy")
    point(Effect.WRITE, dst)
    if src.is_symlink():
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    try:
        os.link(tmp, dst, follow_symlinks=False)
    finally:
        os.unlink(tmp)
    _fsync_dirs({dst.parent})
    point(Effect.UNLINK, src)
    os.unlink(src)


def _write_atomic(path: Path, text: str) -> None:
    tmp = _fitting_temp(path, "tmp")
    try:
        point(Effect.WRITE, path)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        point(Effect.RENAME, path)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # leave no half-written error file behind on a full disk
        raise


_FOLDERS = FolderSyncs()


def _fsync_dirs(dirs: set[Path]) -> None:
    """Make renames durable: a rename is on disk only once its directories are synced. Workers that moved
    into the same folder at once share one fsync of it (group commit), one that began after their renames."""
    for folder in dirs:
        _FOLDERS.sync(folder)
