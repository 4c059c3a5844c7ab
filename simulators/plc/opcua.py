"""A PLC that speaks the agent's OPC UA contract, on a real asyncua server.

Same behaviour as the Modbus PLC simulator (``simulators.plc.gate``): every unit reaching the
camera reaches the reject gate ``gate_delay_s`` later and passes only if its verdict slot holds
exactly ``[trigger, 1]``; no verdict = reject. Rejects are confirmed into the reject log unless
``withhold_confirms`` is set. The line runs only while the agent heartbeat moves, no stop is
requested and a client is connected. Channel security and users as configured (``security``).

Run standalone: ``python -m simulators.plc.opcua --port 4841`` (security None, for a bench).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from collections.abc import Mapping
from typing import Any

from asyncua import Server, ua

from drivers.plc import contract
from drivers.plc.contract import StopCause
from drivers.plc.opcua import nodes as n
from drivers.plc.opcua.security import SecuritySettings, new_server, warn_if_insecure
from simulators.line import SimLine
from simulators.plc.gate import GatePlcSim, feed_units
from simulators.standalone import run_until_signal

ENDPOINT_PATH = "/edge-agent/plc"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


class OpcUaPlcSim(GatePlcSim[Server]):
    def __init__(
        self,
        line: SimLine,
        *,
        gate_delay_s: float = 0.4,
        heartbeat_timeout_s: float = 1.0,
        ring_size: int = 32,
        reject_log_size: int = contract.REJECT_LOG_SIZE,
        auto_restart: bool = True,
        security: SecuritySettings | None = None,
        users: Mapping[str, str] | None = None,
        namespace_uri: str = n.DEFAULT_NAMESPACE_URI,
        node_ids: n.NodeIds | None = None,
    ) -> None:
        super().__init__(
            line,
            gate_delay_s=gate_delay_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            ring_size=ring_size,
            reject_log_size=reject_log_size,
            auto_restart=auto_restart,
        )
        self.security = security or SecuritySettings(security_policy="None")
        self.users = dict(users or {})
        self.namespace_uri = namespace_uri
        self.node_ids = node_ids or n.NodeIds()
        self._ids: dict[str, ua.NodeId] = {}
        self._slots: list[ua.NodeId] = []
        self._log = [0] * reject_log_size

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def from_section(cls, line: SimLine, section: Any) -> OpcUaPlcSim:
        return cls(
            line,
            gate_delay_s=section.gate_delay_s,
            heartbeat_timeout_s=section.heartbeat_timeout_s,
            ring_size=section.ring_size,
            reject_log_size=getattr(section, "reject_log_size", contract.REJECT_LOG_SIZE),
        )

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    def driver_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[plc]`` config section for OpcUaPlc pointing at this simulator."""
        config: dict[str, Any] = {
            "type": "opcua",
            "url": self.url,
            "ring_size": self.ring_size,
            "reject_log_size": self.reject_log_size,
            "namespace_uri": self.namespace_uri,
        }
        if not self.security.secure:
            config["security_policy"] = "None"  # only ever explicit
        return {**config, **overrides}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        warn_if_insecure(self.security, "plc simulator")
        self.host = host
        self.port = port or _free_port(host)
        server = await new_server(
            self.security, passwords=self.users, allow_anonymous=not self.users
        )
        server.set_endpoint(self.url)
        server.set_server_name("edge-agent PLC simulator")
        server.disable_clock()  # its 1 s loop would delay every stop() by up to a second
        try:
            await self._build_nodes(server)
            await server.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        self._server = server
        await self._set(self._ids["ring_size"], self.ring_size, n.UInt16)
        self._start_scan("opcua-plc-sim")

    async def _build_nodes(self, server: Server) -> None:
        ns = await server.register_namespace(self.namespace_uri)
        namespaces = await server.get_namespace_array()
        plc = await server.nodes.objects.add_object(
            ua.NodeId("PLC", ns), ua.QualifiedName("PLC", ns)
        )
        ids = self.node_ids
        for field, (vtype, length) in n.TYPES.items():
            texts = (
                [n.slot_node_text(ids.verdict_slot, k) for k in range(self.ring_size)]
                if field == "verdict_slot"
                else [getattr(ids, field)]
            )
            for text in texts:
                node_id = n.node_id(text, ns, namespaces)
                initial: Any = False if vtype == n.Boolean else 0
                if field == "reject_log":
                    length = self.reject_log_size
                value = ua.Variant([initial] * length if length else initial, vtype)
                name = node_id.Identifier if isinstance(node_id.Identifier, str) else field
                var = await plc.add_variable(node_id, ua.QualifiedName(str(name), ns), value)
                if field in n.AGENT_WRITES:
                    await var.set_writable()
                if field == "verdict_slot":
                    self._slots.append(node_id)
                else:
                    self._ids[field] = node_id

    def drop_link(self) -> None:
        """Close every client connection now, as a pulled cable would."""
        bserver = self._server.bserver if self._server is not None else None
        if bserver is None:
            return
        for protocol in list(bserver.clients):
            if protocol.transport is not None:
                protocol.transport.close()

    async def reset(self) -> None:
        """Back to power-up without restarting the server: counters, log, slots, ground truth
        and the line state; the verdict slots are cleared. Lets tests share one server."""
        self._log = [0] * self.reject_log_size
        self.line.trigger_count = 0
        self._reset_gate()
        for field, (vtype, length) in n.TYPES.items():
            if field in ("verdict_slot", "ring_size", "agent_heartbeat"):
                continue
            initial: Any = False if vtype == n.Boolean else 0
            if field == "reject_log":
                length = self.reject_log_size
            await self._set(self._ids[field], [initial] * length if length else initial, vtype)
        for slot in self._slots:
            await self._set(slot, [0, 0], n.UInt32)

    async def agent_status(self) -> dict[str, int]:
        """The agent's line state and counters as it last wrote them (``Agent.*`` nodes), plus
        its line-stop reason."""
        fields = (*n.STATUS_FIELDS, "stop_reason")
        return {field: int(self._get(self._ids[field])) for field in fields}

    def link_up(self) -> bool:
        """What the PLC can tell about its link to the agent: a client is connected."""
        bserver = self._server.bserver if self._server is not None else None
        return bool(bserver and bserver.clients)

    async def _close(self, server: Server) -> None:
        await server.stop()

    # --- the gate's nodes ---------------------------------------------------------------------

    async def _write_trigger(self, trigger: int) -> None:
        await self._set(self._ids["trigger_count"], trigger, n.UInt32)

    async def _write_plc_heartbeat(self, value: int) -> None:
        await self._set(self._ids["plc_heartbeat"], value, n.UInt16)

    async def _read_agent_heartbeat(self) -> int:
        return int(self._get(self._ids["agent_heartbeat"]))

    async def _read_stop_request(self) -> bool:
        return bool(self._get(self._ids["line_stop_request"]))

    async def _write_watchdog(self, *, running: bool, hb_ok: bool) -> None:
        await self._set(self._ids["agent_heartbeat_ok"], hb_ok, n.Boolean)

    async def _write_run_state(self, *, running: bool, cause: StopCause) -> None:
        await self._set(self._ids["line_state"], int(running), n.UInt16)
        await self._set(self._ids["stop_cause"], int(cause), n.UInt16)

    async def _read_slot(self, trigger: int) -> tuple[object, object] | None:
        value = self._get(self._slots[n.verdict_slot(trigger, self.ring_size)])
        if not isinstance(value, list | tuple) or len(value) != 2:
            return None  # not a [trigger, verdict] pair: garbage
        return value[0], value[1]

    async def _write_passed(self, count: int) -> None:
        await self._set(self._ids["passed"], count, n.UInt32)

    async def _write_rejected(self, count: int) -> None:
        await self._set(self._ids["rejected"], count, n.UInt32)

    async def _write_confirm(self, confirm_number: int, trigger: int) -> None:
        self._log[n.reject_log_index(confirm_number, self.reject_log_size)] = trigger
        # Log before counter, in the same scan: a reader of both sees them agree.
        await self._set(self._ids["reject_log"], list(self._log), n.UInt32)
        await self._set(self._ids["reject_confirms"], confirm_number, n.UInt32)

    # --- address space ------------------------------------------------------------------------

    def _get(self, node_id: ua.NodeId) -> Any:
        assert self._server is not None
        return self._server.read_attribute_value(node_id).Value.Value

    async def _set(self, node_id: ua.NodeId, value: Any, vtype: ua.VariantType) -> None:
        assert self._server is not None
        await self._server.write_attribute_value(node_id, ua.DataValue(ua.Variant(value, vtype)))


# --- standalone ---------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    line = SimLine(units_per_min=args.units_per_min)
    sim = OpcUaPlcSim(line, gate_delay_s=args.gate_delay, ring_size=args.ring_size)
    await sim.start(args.host, args.port)
    try:
        print(f"OPC UA PLC simulator on {sim.url} (ring size {sim.ring_size})", flush=True)
        await feed_units(line)
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4841)
    parser.add_argument("--ring-size", type=int, default=32)
    parser.add_argument("--gate-delay", type=float, default=0.4)
    parser.add_argument("--units-per-min", type=float, default=300.0)
    args = parser.parse_args(argv)
    run_until_signal(_serve(args))


if __name__ == "__main__":
    main()
