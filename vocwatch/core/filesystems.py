"""Which filesystems inotify cannot be trusted on: by statfs f_type (linux/magic.h and the filesystems' own).

inotify sees only what this kernel does to a file. On a network or FUSE filesystem another host's (or the
FUSE daemon's) writes never raise an event, so ``watch.mode = "auto"`` polls such paths instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# f_type -> (name, why inotify misses writes there). Only filesystems whose writes may come from elsewhere.
REMOTE: Mapping[int, tuple[str, str]] = {
    0x6969: ("nfs", "an NFS share: writes by other hosts raise no inotify events"),
    0x517B: ("smb", "an SMB share: writes by other hosts raise no inotify events"),
    0xFF534D42: ("cifs", "a CIFS/SMB share: writes by other hosts raise no inotify events"),
    0xFE534D42: ("smb2", "an SMB2/3 share: writes by other hosts raise no inotify events"),
    0x65735546: ("fuse", "a FUSE filesystem (sshfs, rclone mount, s3fs...): its writes bypass inotify"),
    0x564C: ("ncp", "a NetWare share: writes by other hosts raise no inotify events"),
    0x73757245: ("coda", "a Coda share: writes by other hosts raise no inotify events"),
    0x5346414F: ("afs", "an AFS share: writes by other hosts raise no inotify events"),
    0x6B414653: ("afs", "an AFS share: writes by other hosts raise no inotify events"),
    0x00C36400: ("ceph", "a CephFS mount: writes by other clients raise no inotify events"),
    0x01021997: ("9p", "a 9p share (VM or WSL): the host's writes raise no inotify events"),
    0x786F4256: ("vboxsf", "a VirtualBox shared folder: the host's writes raise no inotify events"),
    0x01161970: ("gfs2", "a GFS2 cluster filesystem: other nodes' writes raise no inotify events"),
    0x7461636F: ("ocfs2", "an OCFS2 cluster filesystem: other nodes' writes raise no inotify events"),
    0x0BD00BD0: ("lustre", "a Lustre mount: other clients' writes raise no inotify events"),
    0x47504653: ("gpfs", "a GPFS mount: other nodes' writes raise no inotify events"),
    0x013111A8: ("ibrix", "an IBRIX mount: other nodes' writes raise no inotify events"),
}
LOCAL: Mapping[int, str] = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x2FC12FC1: "zfs",
    0x794C7630: "overlayfs",
    0x858458F6: "ramfs",
    0xF2F52010: "f2fs",
    0x4D44: "vfat",
    0x5346544E: "ntfs",
}


def name_of(f_type: int) -> str:
    if f_type in REMOTE:
        return REMOTE[f_type][0]
    return LOCAL.get(f_type, f"0x{f_type:x}")


@dataclass(frozen=True, slots=True)
class Choice:
    """What ``watch.mode`` comes to: ``poll`` for every path in ``polled`` (path, why), or events."""

    mode: str  # "inotify" or "poll"
    polled: tuple[tuple[str, str], ...] = ()
    why: str = ""

    def show(self) -> str:
        if self.mode == "poll" and self.polled:
            return "poll: " + "; ".join(f"{path} is {why}" for path, why in self.polled)
        return f"{self.mode}{': ' + self.why if self.why else ''}"


def choose(mode: str, types: Sequence[tuple[str, int | None]]) -> Choice:
    """``watch.mode`` and the f_type of the inbox (first) and of every mount below it (None: unknown)."""
    if mode == "poll":
        return Choice("poll", why="watch.mode = poll")
    if mode == "inotify":
        return Choice("inotify", why="watch.mode = inotify")
    remote = tuple((path, REMOTE[t][1]) for path, t in types if t is not None and t in REMOTE)
    if remote:
        return Choice("poll", remote)
    names = sorted({name_of(t) for _, t in types if t is not None})
    return Choice("inotify", why=f"auto: local filesystem ({', '.join(names) or 'type unknown'})")
