"""The serial ledger: forward-only states, no reuse, atomic commits, recovery, reconciliation."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_agent.db import open_db, open_reader
from edge_agent.errors import LedgerError
from edge_agent.ledger import BatchInfo, Ledger, SerialState, UnitOutcome
from edge_agent.reconcile import reconcile

GTIN = "09506000134352"
ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def make_ledger(state_dir: Path) -> Ledger:
    return Ledger(
        open_db(state_dir), read_point="urn:epc:id:sgln:0950600.01340.T", company_prefix_length=7
    )


def open_batch(ledger: Ledger, batch_id: str = "B1", target: int = 10) -> BatchInfo:
    return ledger.open_batch(batch_id, GTIN, "LOT1", "281200", target)


def send_one(ledger: Ledger, batch: BatchInfo) -> str:
    ledger.ensure_allocated(batch, 1, length=10, alphabet=ALPHABET)
    taken = ledger.take_for_print(batch)
    assert taken is not None
    return taken[1]


def test_a_serial_is_sent_once_and_moves_only_forward(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    serial = send_one(ledger, batch)
    assert ledger.state_of(GTIN, serial) == SerialState.SENT
    assert ledger.mark_printed(batch, serial)
    assert not ledger.mark_printed(batch, serial)  # a second confirmation changes nothing
    ledger.commit_outcomes(batch, [UnitOutcome(1, True, "ok", serial)])
    assert ledger.state_of(GTIN, serial) == SerialState.COMMISSIONED
    with pytest.raises(LedgerError, match="cannot move from commissioned to commissioned"):
        ledger.commit_outcomes(batch, [UnitOutcome(2, True, "ok", serial)])


def test_generated_serials_are_never_reused_across_batches_and_restarts(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    first = open_batch(ledger, "B1", 50)
    sent = {send_one(ledger, first) for _ in range(50)}
    ledger.close_batch("B1")
    ledger.conn.close()
    ledger = make_ledger(tmp_path)  # as after a restart
    second = open_batch(ledger, "B2", 50)
    sent2 = {send_one(ledger, second) for _ in range(50)}
    assert len(sent) == 50 and len(sent2) == 50 and not sent & sent2
    assert all(set(s) <= set(ALPHABET) and len(s) == 10 for s in sent | sent2)


def test_generated_serials_are_not_sequential(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger, target=20)
    serials = [send_one(ledger, batch) for _ in range(20)]
    assert serials != sorted(serials)


def test_a_group_commit_is_all_or_nothing(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    good = send_one(ledger, batch)
    ledger.mark_printed(batch, good)
    not_printed = send_one(ledger, batch)
    with pytest.raises(LedgerError):
        ledger.commit_outcomes(
            batch, [UnitOutcome(1, True, "ok", good), UnitOutcome(2, True, "ok", not_printed)]
        )
    assert ledger.state_of(GTIN, good) == SerialState.PRINTED
    assert ledger.conn.execute("SELECT count(*) FROM units").fetchone() == (0,)
    assert ledger.conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_commissioning_writes_its_event_in_the_same_transaction(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    serial = send_one(ledger, batch)
    ledger.mark_printed(batch, serial)
    ledger.commit_outcomes(batch, [UnitOutcome(7, True, "ok", serial)])
    kind, payload = ledger.conn.execute("SELECT kind, payload FROM outbox").fetchone()
    event = json.loads(payload)
    assert kind == "commissioning"
    assert event["epcList"] == [f"urn:epc:id:sgtin:9506000.013435.{serial}"]
    assert event["bizStep"] == "commissioning" and event["action"] == "ADD"
    assert event["ilmd"]["cbvmda:itemExpirationDate"] == "2028-12-31"  # DD=00 → end of month
    assert event["eventID"].startswith("urn:uuid:")


def test_recovery_rejects_units_in_flight(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    sent = send_one(ledger, batch)
    printed = send_one(ledger, batch)
    ledger.mark_printed(batch, printed)
    ledger.ensure_allocated(batch, 3, length=10, alphabet=ALPHABET)
    settled = dict(ledger.recover_in_flight(batch))
    assert settled == {sent: "sent", printed: "printed"}
    assert ledger.state_of(GTIN, sent) == ledger.state_of(GTIN, printed) == SerialState.REJECTED
    assert len(ledger.serials_in(batch.id, SerialState.ALLOCATED)) == 3  # never sent: still usable


def test_a_pass_rejected_at_the_gate_is_decommissioned(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    serial = send_one(ledger, batch)
    ledger.mark_printed(batch, serial)
    ledger.commit_outcomes(batch, [UnitOutcome(5, True, "ok", serial)])
    assert ledger.confirm_rejected_at_gate(batch, 5) == "decommissioned"
    assert ledger.state_of(GTIN, serial) == SerialState.REJECTED
    assert ledger.confirm_rejected_at_gate(batch, 99) is None


def test_closed_batch_cannot_be_reopened_and_product_must_match(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    open_batch(ledger)
    with pytest.raises(LedgerError, match="config says GTIN"):
        ledger.open_batch("B1", GTIN, "OTHERLOT", "281200", 10)
    ledger.close_batch("B1")
    with pytest.raises(LedgerError, match="already closed"):
        open_batch(ledger)


def test_serial_list_from_l3(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    serial_file = tmp_path / "serials.txt"
    serial_file.write_text("# from L3\nAAA1\nAAA2\nAAA3\n")
    assert ledger.import_serial_list(GTIN, serial_file) == 3
    assert ledger.import_serial_list(GTIN, serial_file) == 0
    batch = open_batch(ledger)
    assert ledger.allocate_from_pool(batch, 2) == 2
    assert [ledger.take_for_print(batch), ledger.take_for_print(batch)] == [
        (1, "AAA1"),
        (2, "AAA2"),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("OK1\nBAD SERIAL\n")
    with pytest.raises(LedgerError, match=r"bad.txt:2: serial 'BAD SERIAL' is invalid"):
        ledger.import_serial_list(GTIN, bad)


def test_corrupt_database_is_refused_with_instructions(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger)
    for _ in range(200):
        send_one(ledger, batch)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.conn.close()
    db = tmp_path / "state.db"
    data = bytearray(db.read_bytes())
    data[4096 * 2 : 4096 * 2 + 512] = b"\xff" * 512
    db.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="restore"):
        open_db(tmp_path)


def test_reconciliation_of_a_closed_batch(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    batch = open_batch(ledger, target=4)
    serials = [send_one(ledger, batch) for _ in range(3)]
    for s in serials:
        ledger.mark_printed(batch, s)
    ledger.commit_outcomes(
        batch,
        [
            UnitOutcome(1, True, "ok", serials[0]),
            UnitOutcome(2, False, "no_read", serials[1]),
            UnitOutcome(3, True, "ok", serials[2]),
        ],
    )
    ledger.ensure_allocated(batch, 1, length=10, alphabet=ALPHABET)
    assert ledger.close_batch(batch.id) == 1
    with contextlib.closing(open_reader(tmp_path)) as conn:
        report = reconcile(conn)
    assert report["balanced"], report["problems"]
    assert (report["units"], report["passed"], report["rejected"]) == (3, 2, 1)
    assert report["rejected_by_reason"] == {"no_read": 1}
    assert (report["serials_allocated"], report["serials_unused"]) == (4, 1)
    # the no_read serial was never commissioned: destroyed with its pack, not decommissioned
    assert report["events_commissioning"] == 2 and report["events_decommissioning"] == 0
    assert report["events_destroying"] == report["serials_rejected_before_commissioning"] == 1


class LedgerMachine(RuleBasedStateMachine):
    """Random sequences of line events never break the ledger's invariants."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp())
        self.ledger = make_ledger(self.dir)
        self.batch = open_batch(self.ledger, target=1000)
        self.sent: list[str] = []
        self.printed: list[str] = []
        self.trigger = 0

    @rule()
    def send(self) -> None:
        self.sent.append(send_one(self.ledger, self.batch))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        serial = self.sent.pop(data.draw(st.integers(0, len(self.sent) - 1)))
        assert self.ledger.mark_printed(self.batch, serial)
        self.printed.append(serial)

    @precondition(lambda self: self.printed)
    @rule(passed=st.booleans())
    def decide(self, passed: bool) -> None:
        self.trigger += 1
        serial = self.printed.pop(0)
        self.ledger.commit_outcomes(
            self.batch, [UnitOutcome(self.trigger, passed, "ok" if passed else "no_read", serial)]
        )

    @rule()
    def restart(self) -> None:
        self.ledger.conn.close()
        self.ledger = make_ledger(self.dir)
        self.ledger.recover_in_flight(self.batch)
        self.sent.clear()
        self.printed.clear()

    @invariant()
    def balanced(self) -> None:
        with contextlib.closing(open_reader(self.dir)) as conn:
            report = reconcile(conn)
        assert report["balanced"], report["problems"]
        assert report["serials_in_flight"] == len(self.sent) + len(self.printed)

    def teardown(self) -> None:
        self.ledger.conn.close()


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
