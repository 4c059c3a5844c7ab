"""Crash safety of the L3 link: the agent process is SIGKILLed at a named crash point (the same
death as a power cut), restarted on the same state database, and L3 must see each effect once.

- killed after L3 answered a page request, before the page was recorded: the restarted agent
  asks again with the same request id, gets the same page, and L3 never hands out a second;
- killed after L3 acknowledged a return, before it was recorded: the restarted agent sends it
  again with the same message id; L3 keeps it once and the ledger returns the serials once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from edge_agent.l3 import messages, requests
from edge_agent.l3.requests import RequestState
from edge_agent.ledger import SerialState
from edge_agent.orders import audit
from edge_agent.orders.model import OrderCommand, OrderState
from simulators.l3 import L3Sim
from tests.helpers.l3 import FAST, l3_order, make_agent, running, until

TESTS = Path(__file__).parent

# The agent's L3 side in a process of its own, until it is killed (or the test stops it).
SERVICE = """
import asyncio, json, sys
from pathlib import Path
from tests.helpers.l3 import FAST, make_agent, make_link
from edge_agent.l3.service import L3Service

async def main() -> None:
    agent = make_agent(Path(sys.argv[1]))
    link = make_link({**FAST, **json.loads(sys.argv[2])})
    await L3Service(agent.commands, link, agent.conn, settings=link.config).run()

asyncio.run(main())
"""


async def run_until_killed(state_dir: Path, section: dict[str, object], crash_at: str) -> int:
    env = {**os.environ, "EDGE_AGENT_CRASH_AT": crash_at, "PYTHONPATH": str(TESTS)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVICE, str(state_dir), json.dumps({**FAST, **section}), env=env
    )
    try:
        async with asyncio.timeout(60):
            return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_killed_after_l3_answered_a_page_the_same_page_comes_again(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with L3Sim() as sim:
        sim.add_order(l3_order("ORD-1"))
        code = await run_until_killed(state_dir, sim.driver_config(), "l3_page_received:1")
        assert code == -signal.SIGKILL
        (token,) = sim.site.pages  # L3 handed out one page; the agent died before recording it
        agent = make_agent(state_dir)
        (pending,) = requests.pending(agent.conn)
        assert pending.request_id == token
        assert agent.serials("ORD-1") == []
        async with running(agent, sim.driver_config()):
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "ready")
        assert list(sim.site.pages) == [token]  # no second page
        assert sim.site.page_requests[token] == 2
        assert agent.serials("ORD-1") == list(sim.site.pages[token].serials)
        (done,) = requests.for_order(agent.conn, "ORD-1")
        assert done.state == RequestState.DONE
        stores = [r for r in audit.rows(agent.conn, order_id="ORD-1") if r.action == "store"]
        assert len(stores) == 1


async def test_killed_after_l3_acknowledged_a_return_it_counts_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    operator = audit.Actor("alice", "api")
    async with L3Sim() as sim:
        sim.add_order(l3_order("ORD-1"))
        agent = make_agent(state_dir)
        async with running(agent, sim.driver_config()):
            await until(lambda: agent.state("ORD-1") == OrderState.READY, "ready")
        await agent.commands.command("ORD-1", OrderCommand.CANCEL, operator, reason="replanned")
        unused = agent.serials("ORD-1", SerialState.UNUSED)
        assert [m.id for m in messages.pending(agent.conn)] == ["ORD-1:return", "ORD-1:report"]
        agent.conn.close()

        code = await run_until_killed(state_dir, sim.driver_config(), "l3_message_delivered:1")
        assert code == -signal.SIGKILL
        assert list(sim.returns) == ["ORD-1:return"]  # L3 has it; the agent did not record it

        agent = make_agent(state_dir)
        assert agent.serials("ORD-1", SerialState.UNUSED) == unused
        async with running(agent, sim.driver_config()):
            await until(lambda: messages.pending_count(agent.conn) == 0, "messages delivered")
        assert sim.duplicates == 1  # the return came twice, with one id
        assert sim.site.returned_serials() == unused
        assert agent.serials("ORD-1", SerialState.RETURNED) == unused
        assert set(sim.reports) == {"ORD-1:report"}
