"""What the planner knows of the inbox: each file seen, the pair groups, and which groups changed.

Paths are relative, "/"-separated str (not PurePosixPath): a 100,000-pair backlog holds 200,000.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vocwatch.core import pairing
from vocwatch.core.pairing import Entry, Key, printable

# Folders more than this many levels below the inbox are not looked into (a scan.too_deep warning says
# so, once per folder): a 1,000-deep chain of folders must not cost a walk per level at every hint.
MAX_DEPTH = 64
TOO_DEEP_FIX = f"keep recordings at most {MAX_DEPTH} folders below the inbox; move this folder's content up"


def folder_depth(rel: str) -> int:
    """How many folders below the inbox ``rel`` (a folder, relative to the inbox) is: "." is 0."""
    return 0 if rel in (".", "") else rel.strip("/").count("/") + 1


class Inbox:
    def __init__(self, root: Path, *, ignore: Iterable[str], recursive: bool, log: Any) -> None:
        self.root = root
        self._root = str(root)
        self._prefix = self._root.rstrip("/") + "/"
        # One compiled pattern instead of fnmatch per pattern per name: the scan asks for every file.
        self._ignore = pairing.ignore_pattern(ignore).match
        self.recursive = recursive
        self.entries: dict[str, Entry] = {}
        # Tuples, not sets: a group holds two or three names, and 100,000 small sets cost 20 MB.
        self._groups: dict[Key, tuple[str, ...]] = {}
        self.dirty: set[Key] = set()
        self._unreadable: set[str] = set()
        self._too_deep: set[str] = set()
        self._log = log

    def path(self, rel: str) -> str:
        return self._prefix + rel

    def rel(self, path: str) -> str | None:
        """``path`` relative to the inbox ("." for the inbox itself), or None when outside it."""
        if path.startswith(self._prefix):
            rel = path[len(self._prefix) :]
            parts = rel.split("/")
            if "" not in parts and "." not in parts:  # already what pathlib would make of it
                return rel
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def ignored(self, rel: str) -> bool:
        return rel != "." and any(self._ignore(part) for part in rel.split("/"))

    def walk(self, rel: str = ".", *, deep: bool = True) -> Iterator[tuple[str, os.stat_result]]:
        """Every file below ``rel`` (not following links), streamed and without recursion: trees can be deep.

        Folders more than MAX_DEPTH levels down are left out; ``deep=False``: only ``rel``'s own files.
        """
        stack = ["" if rel == "." else rel + "/"]
        while stack:
            base = stack.pop()
            folder = os.path.join(self._root, base[:-1]) if base else self._root
            try:
                with os.scandir(folder) as it:
                    for item in it:
                        name = item.name
                        if self._ignore(name):  # the folders above were checked on the way down
                            continue
                        try:
                            st = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            if self.recursive and deep:
                                if base.count("/") < MAX_DEPTH:
                                    stack.append(base + name + "/")
                                else:
                                    self.too_deep(base + name)
                            continue
                        yield base + name, st
            except OSError as exc:
                if folder not in self._unreadable:  # once per outage, not at every rescan
                    self._unreadable.add(folder)
                    self._log.warning("scan.unreadable", folder=printable(folder), error=str(exc))
                continue
            self._unreadable.discard(folder)

    def too_deep(self, rel: str) -> None:
        """Say once that the folder ``rel`` (and all below it) is beyond MAX_DEPTH and not looked into."""
        rel = "/".join(rel.split("/")[: MAX_DEPTH + 1])  # the topmost folder too deep: one warning per chain
        if rel not in self._too_deep:
            self._too_deep.add(rel)
            self._log.warning(
                "scan.too_deep",
                folder=printable(self.path(rel)),
                depth=folder_depth(rel),
                max_depth=MAX_DEPTH,
                fix=TOO_DEEP_FIX,
            )

    def observe(
        self, rel: str, st: os.stat_result, now: float, complete_at: float | None = None, renamed: bool = False
    ) -> None:
        before = self.entries.get(rel)
        entry = pairing.observe(
            before,
            rel,
            st.st_size,
            st.st_mtime_ns,
            now,
            ino=st.st_ino,
            ctime_ns=st.st_ctime_ns,
            complete_at=complete_at,
            renamed=renamed,
            regular=stat.S_ISREG(st.st_mode),
        )
        if entry is before:
            return
        self.entries[rel] = entry
        key = pairing.group_key(rel)
        if before is None:
            self._groups[key] = (*self._groups.get(key, ()), rel)
        self.dirty.add(key)

    def handle_event(self, rel: str, event: pairing.HandleEvent) -> None:
        """An open, write or close of a known file, as inotify reported it (pairing.py, rule 3b)."""
        before = self.entries.get(rel)
        if before is None:
            return
        entry = pairing.handle_event(before, event)
        if entry is not before:
            self.entries[rel] = entry
            self.dirty.add(pairing.group_key(rel))

    def hold(self, rel: str, until: float | None) -> None:
        """The last look found ``rel`` held open by a writer, not to be looked at before ``until``;
        or (None) found no writer (pairing.py, rule 3)."""
        before = self.entries.get(rel)
        if before is None:
            return
        entry = pairing.held(before, until)
        if entry != before:
            self.entries[rel] = entry
            self.dirty.add(pairing.group_key(rel))

    def forget(self, rel: str) -> None:
        if self.entries.pop(rel, None) is None:
            return
        key = pairing.group_key(rel)
        rest = tuple(r for r in self._groups.get(key, ()) if r != rel)
        if rest:
            self._groups[key] = rest
        else:
            self._groups.pop(key, None)
        self.dirty.add(key)

    def vanished(self, rel: str, *, folder: bool) -> None:
        """A file, or with ``folder`` everything below a folder, is no longer in the inbox."""
        if not folder:
            self.forget(rel)
            return
        prefix = "" if rel == "." else rel + "/"
        for r in [r for r in self.entries if r.startswith(prefix)]:
            self.forget(r)

    def members(self, key: Key) -> list[Entry]:
        return [self.entries[r] for r in self._groups.get(key, ())]

    def take_dirty(self) -> list[Key]:
        keys, self.dirty = list(self.dirty), set()
        return keys
