"""``python -m simulators.l3``: a standalone L3 site-server simulator.

    python -m simulators.l3 --port 8095 [--orders orders.json] [--token-env L3_TOKEN]
    python -m simulators.l3 --mqtt-host 127.0.0.1 --mqtt-port 1883 [--orders orders.json]
    python -m simulators.l3 --folder /srv/l3-exchange [--orders orders.json]

It prints the agent's ``[l3]`` section that talks to it, then a line per 5 s with what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from pathlib import Path

from simulators.l3.server import L3Sim


async def _run(args: argparse.Namespace) -> None:
    token = os.environ.get(args.token_env) if args.token_env else None
    sim = L3Sim(token=token, pool_size=args.pool_size, seed=args.seed)
    await sim.start(host=args.host, port=args.port)
    try:
        if args.mqtt_host:
            await sim.attach_mqtt(args.mqtt_host, args.mqtt_port)
        if args.folder:
            await sim.attach_folder(args.folder)
        if args.orders:
            for document in json.loads(args.orders.read_text(encoding="utf-8")):
                sim.add_order(document)
        print(json.dumps({"l3": sim.driver_config()}), flush=True)
        while True:
            await asyncio.sleep(5)
            print(json.dumps(sim.ground_truth()), flush=True)
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="L3 site-server simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8095, help="HTTP port")
    parser.add_argument("--token-env", help="environment variable holding the expected token")
    parser.add_argument("--pool-size", type=int, help="serials per GTIN (default unlimited)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mqtt-host", help="also serve through this MQTT broker")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--folder", type=Path, help="also serve through this exchange folder")
    parser.add_argument("--orders", type=Path, help="JSON file: a list of orders to hand out")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
