"""Generated serials: random, and drawn from a part of the serial space no restore reuses.

A database restored from a backup does not know the serials its predecessor generated after the
backup was taken; drawing at random again could hand one of them out a second time. So the serial
space is split into generation epochs, and a restore moves the database to an epoch its lineage
has never used (``new_epoch``). A generated serial is ``body + tag``: ``body`` is random
(``length - 2`` characters of the alphabet) and the two-character ``tag`` is
``(H(body) + epoch) mod len(alphabet)**2`` written in the alphabet, where ``H`` is a keyed hash
(BLAKE2b with a random key kept in the database's ``meta`` table, backed up with it). Each serial
belongs to exactly one epoch, so the serials of two epochs never meet, whatever the random draws.

The tag is not a visible prefix: without the key, every character of a serial looks random and
the chance that a guessed serial is a valid one stays ``quantity / len(alphabet)**length`` (the
EU FMD figure). An epoch holds ``len(alphabet)**(length - 2)`` serials. A lineage has
``EPOCHS`` = 100 epochs (10-symbol alphabets have exactly 100 tags): one per restore.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.db import write
from edge_agent.errors import LedgerError

TAG_WIDTH = 2
EPOCHS = 100  # 10 ** TAG_WIDTH: the smallest alphabet allowed (10 symbols) has this many tags
_KEY, _EPOCH, _USED = "serial_key", "serial_epoch", "serial_epochs_used"


@dataclass(frozen=True)
class SerialSpace:
    key: bytes
    epoch: int

    def draw(self, length: int, alphabet: str) -> str:
        # One draw for the whole body (uniform over every body, as a draw per character is):
        # one getrandom call a serial instead of one a character.
        body = _digits(
            secrets.randbelow(len(alphabet) ** (length - TAG_WIDTH)), length - TAG_WIDTH, alphabet
        )
        return body + _encode((self._hash(body) + self.epoch) % _tags(alphabet), alphabet)

    def epoch_of(self, serial: str, alphabet: str) -> int:
        """The epoch a serial of this alphabet belongs to (``draw``'s inverse)."""
        body, tag = serial[:-TAG_WIDTH], serial[-TAG_WIDTH:]
        return (_decode(tag, alphabet) - self._hash(body)) % _tags(alphabet)

    def _hash(self, body: str) -> int:
        digest = hashlib.blake2b(body.encode(), key=self.key, digest_size=8).digest()
        return int.from_bytes(digest, "big")


def space(conn: sqlite3.Connection) -> SerialSpace:
    """This database's serial space; its key is made at the first use (inside ``write``)."""
    meta = _meta(conn)
    if _KEY not in meta:
        key = secrets.token_hex(32)
        with write(conn):
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?), (?, '0'), (?, '[0]')",
                (_KEY, key, _EPOCH, _USED),
            )
        meta = _meta(conn)
    return SerialSpace(bytes.fromhex(meta[_KEY]), int(meta.get(_EPOCH, "0")))


def epochs_used(conn: sqlite3.Connection) -> tuple[int, list[int]]:
    """(current epoch, every epoch this database's lineage has used)."""
    meta = _meta(conn)
    current = int(meta.get(_EPOCH, "0"))
    used = {int(e) for e in json.loads(meta.get(_USED, "[]"))} | {current}
    return current, sorted(used)


def new_epoch(conn: sqlite3.Connection, also_used: Iterable[int] = ()) -> int:
    """Move to an epoch never used by this lineage (nor in ``also_used``: epochs that other
    copies of it are known to use). Random among the free ones, so two restores of one backup
    that cannot see each other still meet only with probability 1 / (free epochs)."""
    _, used = epochs_used(conn)
    taken = set(used) | set(also_used)
    free = [e for e in range(EPOCHS) if e not in taken]
    if not free:
        raise LedgerError(
            f"this database's lineage has used all {EPOCHS} serial generation epochs (one per "
            "restore from a backup); generated serials could repeat. Start a new database with "
            "the serials confirmed by L3"
        )
    epoch = secrets.choice(free)
    with write(conn):
        space(conn)  # the key exists before the first generation of the new epoch
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(_EPOCH, str(epoch)), (_USED, json.dumps(sorted(taken | {epoch})))],
        )
    return epoch


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT key, value FROM meta WHERE key IN (?, ?, ?)", (_KEY, _EPOCH, _USED)
    ).fetchall()
    return {str(k): str(v) for k, v in rows}


def _tags(alphabet: str) -> int:
    return int(len(alphabet) ** TAG_WIDTH)


def _encode(value: int, alphabet: str) -> str:
    return _digits(value, TAG_WIDTH, alphabet)


def _digits(value: int, width: int, alphabet: str) -> str:
    """``value`` written in ``width`` characters of ``alphabet`` (its digits, most significant first)."""
    base, out = len(alphabet), []
    for _ in range(width):
        value, digit = divmod(value, base)
        out.append(alphabet[digit])
    return "".join(reversed(out))


def _decode(tag: str, alphabet: str) -> int:
    value = 0
    for char in tag:
        value = value * len(alphabet) + alphabet.index(char)
    return value
