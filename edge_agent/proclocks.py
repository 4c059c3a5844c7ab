"""Which processes hold file locks on given files, from Linux's /proc/locks.

SQLite locks byte ranges of the database and its ``-shm`` file with POSIX advisory locks for as
long as a connection is open, so this names the process behind "database is locked" and tells
whether anyone has the state database open at all. Reading /proc/locks opens none of the files:
closing a descriptor of a file drops every POSIX lock the process holds on it, so code that may
share a process with SQLite connections must not open and close their files to find out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def holders(paths: Iterable[Path]) -> dict[int, str] | None:
    """pid -> command line of every process holding a lock on one of ``paths``; None when the
    system cannot tell (no /proc/locks). Includes this process if it holds one."""
    inodes = set()
    for path in paths:
        try:
            inodes.add(path.stat().st_ino)
        except OSError:
            continue
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return None
    found: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter queued behind a lock, not a holder
            continue
        # "1: POSIX  ADVISORY  WRITE 1234 08:02:131 128 128"; OFD locks show pid -1
        if len(fields) < 6 or not fields[4].lstrip("-").isdigit():
            continue
        pid, where = int(fields[4]), fields[5]
        # The device in /proc/locks is the inode's superblock, which overlay filesystems report
        # differently from stat(); the inode number is what identifies the file here.
        if (
            pid > 0
            and where.rsplit(":", 1)[-1].isdigit()
            and int(where.rsplit(":", 1)[-1]) in inodes
        ):
            found.setdefault(pid, command_line(pid))
    return found


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= 120 else text[:117] + "..."


def describe(found: dict[int, str] | None, *, exclude_self: bool = True) -> str:
    """'process 1234 (edge-agent run ...)' for a message; '' when nobody else is known."""
    if not found:
        return ""
    others = {p: c for p, c in found.items() if not (exclude_self and p == os.getpid())}
    return ", ".join(f"process {pid} ({cmd})" for pid, cmd in sorted(others.items()))
