"""`edge-agent opcua-cert`: an application instance certificate for the OPC UA PLC link and the
agent's OPC UA server."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any


def add_commands(sub: Any) -> None:
    cmd = sub.add_parser(
        "opcua-cert", help="create a self-signed OPC UA application certificate and key"
    )
    cmd.add_argument("--out", type=Path, required=True, help="folder for <name>.der and <name>.pem")
    cmd.add_argument("--name", default="edge-agent", help="file name and common name")
    cmd.add_argument("--uri", help="application URI (default urn:edge-agent:<host name>)")
    cmd.add_argument("--host", help="DNS name in the certificate (default: this host)")
    cmd.add_argument("--days", type=int, default=730, help="validity in days (default 730)")
    cmd.add_argument("--force", action="store_true", help="overwrite existing files")
    cmd.set_defaults(handler=_opcua_cert)


def _opcua_cert(args: argparse.Namespace) -> int:
    from edge_agent.opcua_server.certs import write_identity

    host = args.host or socket.gethostname()
    uri = args.uri or f"urn:edge-agent:{host}"
    if not 1 <= args.days <= 36500:
        print("opcua-cert: --days must be 1..36500", file=sys.stderr)
        return 2
    try:
        cert, key = write_identity(
            args.out, args.name, uri, host=host, days=args.days, overwrite=args.force
        )
    except FileExistsError as exc:
        print(f"opcua-cert: {exc} (use --force)", file=sys.stderr)
        return 1
    print(f"certificate {cert}\nprivate key {key} (mode 0600)\napplication URI {uri}\n")
    print("In the agent's config ([plc] for the PLC link, [opcua_server] for its own server):")
    print(
        f'  certificate = "{cert}"\n  private_key = "{key}"\n  trust_dir = "<folder of peer certificates>"'
    )
    print(f"Then add {cert.name} to the PLC's (or the SCADA client's) trusted certificates.")
    return 0
