"""The audit trail: its rows, and the proof that the chain holds."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Annotated

from fastapi import APIRouter, Query

from edge_agent.api.deps import CurrentActor, Services, errors
from edge_agent.api.schemas import AuditRowOut, ChainOut
from edge_agent.orders import audit

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get(
    "",
    response_model=list[AuditRowOut],
    responses=errors(422),
    summary="Audit rows, oldest first",
    operation_id="audit_rows",
)
async def rows(
    actor: CurrentActor,
    services: Services,
    order_id: Annotated[
        str | None, Query(max_length=40, description="Only rows of this order")
    ] = None,
    after: Annotated[int, Query(ge=0, le=2**62, description="Rows after this sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditRowOut]:
    found = audit.rows(services.commands.conn, order_id=order_id, after=after, limit=limit)
    return [AuditRowOut.of(r) for r in found]


@router.get(
    "/verify",
    response_model=ChainOut,
    responses=errors(),
    summary="Verify the hash chain",
    operation_id="verify_audit",
)
async def verify(actor: CurrentActor, services: Services) -> ChainOut:
    return ChainOut.of(await verify_chain(services.commands.conn))


async def verify_chain(conn: sqlite3.Connection) -> audit.ChainCheck:
    """Walk the whole chain on a reader connection in a worker thread: a long trail must not
    hold up the event loop the line runs on."""
    path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:
        return audit.verify(conn)  # an in-memory database has no second connection

    def walk() -> audit.ChainCheck:
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        with contextlib.closing(reader):
            return audit.verify(reader)

    return await asyncio.to_thread(walk)
