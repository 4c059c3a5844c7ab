"""Every serial's upstream history follows the EPCIS/CBV state model, whatever the line does.

Issue 10 item 8: serials rejected before they were ever commissioned got a DELETE
decommissioning event, which a repository that checks an EPC's history refuses. Random
sequences of everything the ledger can be told (prints, verdicts, gate rejects of passes, lost
printer links, buffer clears, restarts, batch close) must leave, per serial handed out, exactly
the events CBV has for what became of it, in an order that never contradicts the model."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_agent import epcis
from edge_agent.db import open_db, open_reader
from edge_agent.ledger import Ledger, SerialState, UnitOutcome
from edge_agent.reconcile import reconcile
from tests.helpers.epcis import cbv_history_problems, history_by_epc

GTIN = "09506000134352"
ALPHABET = "0123456789ABCDEF"
EXPECTED = {  # (final state, ever commissioned) -> bizSteps upstream, in order
    (SerialState.COMMISSIONED, True): ["commissioning"],
    (SerialState.REJECTED, True): ["commissioning", "decommissioning"],
    (SerialState.REJECTED, False): ["destroying"],
    (SerialState.UNUSED, False): [],
    (SerialState.SENT, False): [],
    (SerialState.PRINTED, False): [],
}


class SerialLives(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.ledger = self._ledger()
        self.batch = self.ledger.open_batch("B1", GTIN, "LOT1", "281200", 1000)
        self.sent: list[str] = []
        self.printed: list[str] = []
        self.passed: list[int] = []  # triggers of passes the gate may still reject
        self.trigger = 0
        self.closed = False

    def _ledger(self) -> Ledger:
        return Ledger(
            open_db(self.dir),
            read_point="urn:epc:id:sgln:0950600.01340.L1",
            company_prefix_length=7,
        )

    @precondition(lambda self: not self.closed)
    @rule()
    def send(self) -> None:
        self.ledger.ensure_allocated(self.batch, 2, length=10, alphabet=ALPHABET)
        taken = self.ledger.take_for_print(self.batch)
        assert taken is not None
        self.sent.append(taken[1])

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def printer_confirms(self, data: st.DataObject) -> None:
        serial = self.sent.pop(data.draw(st.integers(0, len(self.sent) - 1)))
        assert self.ledger.mark_printed(self.batch, serial)
        self.printed.append(serial)

    @precondition(lambda self: self.printed)
    @rule(passed=st.booleans(), skipped=st.booleans())
    def camera_decides(self, passed: bool, skipped: bool) -> None:
        self.trigger += 1
        serial = self.printed.pop(0)
        missed = [self.printed.pop(0)] if skipped and self.printed else []
        outcome = UnitOutcome(self.trigger, passed, "ok" if passed else "no_read", serial)
        outcome.skipped_serials = missed
        self.ledger.commit_outcomes(self.batch, [outcome])
        if passed:
            self.passed.append(self.trigger)

    @precondition(lambda self: self.passed)
    @rule(data=st.data())
    def gate_rejects_a_pass(self, data: st.DataObject) -> None:
        trigger = self.passed.pop(data.draw(st.integers(0, len(self.passed) - 1)))
        assert self.ledger.confirm_rejected_at_gate(self.batch, trigger) == "decommissioned"

    @precondition(lambda self: self.sent)
    @rule(cleared=st.booleans())
    def printer_link_lost(self, cleared: bool) -> None:
        if cleared:  # the printer says which records it discarded unprinted
            self.ledger.unuse_cleared(self.batch, self.sent)
        else:
            self.ledger.reject_sent(self.batch, self.sent, "printer_link_lost")
        self.sent.clear()

    @rule(unconfirmed=st.booleans())
    def restart(self, unconfirmed: bool) -> None:
        self.ledger.conn.close()
        self.ledger = self._ledger()
        if unconfirmed:
            self.ledger.reject_unconfirmed_prints(self.batch, "print_unconfirmed")
        else:
            self.ledger.recover_in_flight(self.batch)
        self.sent.clear()
        self.printed.clear()

    @precondition(lambda self: not self.closed and not (self.sent or self.printed))
    @rule()
    def close_batch(self) -> None:
        self.ledger.close_batch(self.batch.id)
        self.closed = True

    @invariant()
    def upstream_tells_what_became_of_every_serial(self) -> None:
        with contextlib.closing(open_reader(self.dir)) as conn:
            events = [
                json.loads(p) for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY seq")
            ]
            serials = conn.execute(
                "SELECT s.serial, s.state, EXISTS (SELECT 1 FROM transitions t WHERE "
                "t.gtin = s.gtin AND t.serial = s.serial AND t.to_state = 'commissioned') "
                "FROM serials s WHERE s.seq IS NOT NULL OR s.state = 'unused'"
            ).fetchall()
            report = reconcile(conn)
        assert cbv_history_problems(events) == []
        history = history_by_epc(events)
        for serial, state, commissioned in serials:
            steps = history.get(epcis.sgtin_uri(GTIN, serial, 7), [])
            assert steps == EXPECTED[SerialState(state), bool(commissioned)], (serial, state)
        assert report["balanced"], report["problems"]

    def teardown(self) -> None:
        self.ledger.conn.close()


TestSerialLives = SerialLives.TestCase
TestSerialLives.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
