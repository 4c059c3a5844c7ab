"""`edge-agent decode`: read GS1 DataMatrix codes from image files (filled in by issue 3)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    decode = sub.add_parser("decode", help="decode DataMatrix codes in image files")
    decode.add_argument("images", nargs="+", metavar="IMAGE")
    decode.set_defaults(handler=_decode)


def _decode(args: argparse.Namespace) -> int:
    raise NotImplementedError
