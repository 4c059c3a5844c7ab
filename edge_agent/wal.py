"""Read an SQLite WAL file the way SQLite's own recovery reads it, without SQLite.

SQLite does not tie a ``-wal`` file to its database: the WAL header holds a page size, a
checkpoint counter and two random salts, none of which the database file records. On open,
SQLite replays every transaction of any WAL beside the database whose frames carry the header's
salts and a valid checksum chain, whatever database wrote it. The state database therefore proves
a WAL's origin itself (``edge_agent.db_identity``): every write transaction of the agent rewrites
page 1, whose header carries the agent's ``application_id`` and a write counter, and this module
lists the committed transactions of a WAL with the page-1 image each one wrote.

Format (https://www.sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version,
page size, checkpoint sequence, salt-1, salt-2, checksum), then frames of a 24-byte header (page
number, database size after commit or 0, salt-1, salt-2, checksum) and one page. A frame is valid
while its salts equal the header's and the cumulative checksum over the header and every frame up
to it matches; the first invalid frame ends the log. Frames after the last commit frame belong to
a transaction that never committed and are ignored, as SQLite ignores them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
VERSION = 3007000
# The low bit of the magic says in which byte order the checksum reads the data.
_MAGIC_ORDER = {0x377F0682: "<", 0x377F0683: ">"}
_MASK = 0xFFFFFFFF


class WalUnreadable(Exception):
    """The file is not a WAL SQLite could use (bad magic, version, page size or header checksum)."""


@dataclass(frozen=True)
class PageOneImage:
    """The fields of a database header (page 1) that identify the state database."""

    user_version: int  # unsigned 32-bit view of PRAGMA user_version
    application_id: int

    @classmethod
    def parse(cls, page: bytes) -> PageOneImage:
        (user_version,) = struct.unpack_from(">I", page, 60)
        (application_id,) = struct.unpack_from(">I", page, 68)
        return cls(user_version, application_id)


@dataclass(frozen=True)
class WalTransaction:
    frames: int
    page_one: PageOneImage | None  # the last page-1 image it wrote; None: it left page 1 alone


@dataclass(frozen=True)
class WalContent:
    page_size: int
    checkpoint_seq: int
    transactions: tuple[WalTransaction, ...]  # committed ones, oldest first


def read_wal(path: Path) -> WalContent | None:
    """The committed transactions of the WAL at ``path``; None when it holds no frame at all
    (missing, empty or header-only: SQLite replays nothing from such a file)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not f.peek(1):
            return None
        magic, version, page_size, ckpt_seq, salt1, salt2, sum1, sum2 = struct.unpack(">8I", header)
        order = _MAGIC_ORDER.get(magic)
        if order is None:
            raise WalUnreadable(f"not a WAL file (magic 0x{magic:08x})")
        if version != VERSION:
            raise WalUnreadable(f"unknown WAL format version {version}")
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise WalUnreadable(f"impossible page size {page_size}")
        checksum = _Checksum(order, page_size)
        if checksum.small(header[:24], (0, 0)) != (sum1, sum2):
            raise WalUnreadable("the WAL header checksum does not match (damaged header)")
        committed = _transactions(f, checksum, (salt1, salt2), (sum1, sum2))
        return WalContent(page_size, ckpt_seq, committed)


def _transactions(
    f: BinaryIO, checksum: _Checksum, salts: tuple[int, int], sums: tuple[int, int]
) -> tuple[WalTransaction, ...]:
    """``sums``: the header's checksum, where the frames' chain starts."""
    read = f.read
    page_size = checksum.page_size
    committed: list[WalTransaction] = []
    frames, page_one = 0, None
    while True:
        frame_header = read(FRAME_HEADER_SIZE)
        page = read(page_size)
        if len(frame_header) < FRAME_HEADER_SIZE or len(page) < page_size:
            break
        page_no, db_size, s1, s2, c1, c2 = struct.unpack(">6I", frame_header)
        if page_no == 0 or (s1, s2) != salts:
            break
        sums = checksum.frame(frame_header[:8], page, sums)
        if sums != (c1, c2):
            break
        frames += 1
        if page_no == 1:
            page_one = PageOneImage.parse(page)
        if db_size:  # a commit frame closes the transaction
            committed.append(WalTransaction(frames, page_one))
            frames, page_one = 0, None
    return tuple(committed)


class _Checksum:
    """SQLite's WAL checksum: over 32-bit words x, for each pair, s0 += x[i] + s1, then
    s1 += x[i+1] + s0 (mod 2**32). Per pair that is v' = A v + (a, a + b) with
    A = [[1, 1], [1, 2]], so a frame of m pairs sums to A^m v + sum(A^(m-1-i) c_i): computed with
    numpy from precomputed powers of A instead of 500 Python steps per page. uint64 products wrap
    modulo 2**64, which keeps them right modulo 2**32."""

    def __init__(self, order: str, page_size: int) -> None:
        self.page_size = page_size
        self.dtype = np.dtype(order + "u4")
        self.order = order
        pairs = (8 + page_size) // 8
        powers = [(1, 0, 0, 1)]
        for _ in range(pairs):
            a00, a01, a10, a11 = powers[-1]
            powers.append(
                (
                    (a00 + a01) & _MASK,
                    (a00 + 2 * a01) & _MASK,
                    (a10 + a11) & _MASK,
                    (a10 + 2 * a11) & _MASK,
                )
            )
        self.a_m = powers[pairs]
        weights = np.array(powers[pairs - 1 :: -1], dtype=np.uint64)
        self.w: list[npt.NDArray[np.uint64]] = [weights[:, j].copy() for j in range(4)]

    def small(self, data: bytes, sums: tuple[int, int]) -> tuple[int, int]:
        """The plain loop, for the 24-byte WAL header."""
        s0, s1 = sums
        words = struct.unpack(f"{self.order}{len(data) // 4}I", data)
        for i in range(0, len(words), 2):
            s0 = (s0 + words[i] + s1) & _MASK
            s1 = (s1 + words[i + 1] + s0) & _MASK
        return s0, s1

    def frame(self, head: bytes, page: bytes, sums: tuple[int, int]) -> tuple[int, int]:
        words = np.frombuffer(head + page, dtype=self.dtype).astype(np.uint64)
        a = words[0::2]
        c = a + words[1::2]
        w00, w01, w10, w11 = self.w
        m00, m01, m10, m11 = self.a_m
        s0, s1 = sums
        t0 = int((w00 * a + w01 * c).sum()) + m00 * s0 + m01 * s1
        t1 = int((w10 * a + w11 * c).sum()) + m10 * s0 + m11 * s1
        return t0 & _MASK, t1 & _MASK
