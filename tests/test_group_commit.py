"""Group commit on the line: at full speed commits share their fsync, a slower line never waits.

The writer counts its commits (one fdatasync each with ``synchronous=FULL``); the line's promise
is that at full speed a unit's outcome and a printer refill wait a few milliseconds for company,
and that a line whose frames come further apart than that never waits at all.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ledger import Ledger
from edge_agent.line import runtime
from edge_agent.line.group_commit import CommitCompany
from edge_agent.writer import Writer
from tests.helpers.line import run_balanced, simulators

# --- the policy -------------------------------------------------------------------------------


def frames(company: CommitCompany, gap_s: float, count: int, start: float = 100.0) -> float:
    for i in range(count):
        company.heard_frame(start + i * gap_s)
    return start + (count - 1) * gap_s


def test_no_wait_before_the_line_has_a_rate() -> None:
    company = CommitCompany(0.007)
    assert company.wait_s() == 0.0
    company.heard_frame(5_000.0)  # one frame: no gap yet (not the time since boot)
    assert company.wait_s() == 0.0
    company.heard_frame(5_000.002)
    assert company.wait_s() == 0.007


@given(gap_ms=st.floats(min_value=0.1, max_value=6.9))
def test_frames_closer_than_the_window_wait(gap_ms: float) -> None:
    company = CommitCompany(0.007)
    frames(company, gap_ms / 1000.0, 20)
    assert company.wait_s() == 0.007


@given(gap_ms=st.floats(min_value=7.1, max_value=60_000.0))
def test_a_slower_line_never_waits(gap_ms: float) -> None:
    company = CommitCompany(0.007)
    frames(company, gap_ms / 1000.0, 20)
    assert company.wait_s() == 0.0


def test_a_pause_ends_the_waits_until_the_line_is_back_at_speed() -> None:
    company = CommitCompany(0.007)
    last = frames(company, 0.003, 50)
    company.heard_frame(last + 2.0)  # the line stood for two seconds
    assert company.wait_s() == 0.0
    frames(company, 0.003, 200, start=last + 2.003)
    assert company.wait_s() == 0.007


# --- on the line ------------------------------------------------------------------------------


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[Writer]:
    made: list[Writer] = []
    init = Writer.__init__

    def spy(self: Writer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Writer, "__init__", spy)
    return made


@pytest.fixture
def outcome_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    record = Ledger.record_outcomes

    async def spy(self: Ledger, batch: Any, outcomes: Any) -> None:
        sizes.append(len(outcomes))
        await record(self, batch, outcomes)

    monkeypatch.setattr(Ledger, "record_outcomes", spy)
    return sizes


@pytest.fixture
def company_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the line asked its CommitCompany for, in order."""
    waits: list[float] = []
    wait_s = CommitCompany.wait_s

    def spy(self: CommitCompany) -> float:
        waits.append(wait_s(self))
        return waits[-1]

    monkeypatch.setattr(CommitCompany, "wait_s", spy)
    return waits


@pytest.mark.slow
async def test_at_full_speed_units_share_their_commits(
    agent_config_factory: Any, writers: list[Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window wide enough that the loopback line counts as full speed on a loaded CI host.
    monkeypatch.setattr(runtime, "_COMMIT_COMPANY_S", 0.05)
    units = 200
    await run_balanced(agent_config_factory, simulators(defect_rate=0.05, seed=7), units)
    line_writer = max(writers, key=lambda w: w.stats.jobs)
    # Without the waits each outcome group and each refill commits alone: about 0.8 a unit.
    assert line_writer.stats.commits <= 0.5 * units, line_writer.stats


@pytest.mark.slow
async def test_a_paced_line_commits_each_outcome_at_once(
    agent_config_factory: Any,
    outcome_groups: list[int],
    company_waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A window just under the line's 100 ms between units: the line is not at full speed.
    monkeypatch.setattr(runtime, "_COMMIT_COMPANY_S", 0.08)
    units = 30  # more than the printer holds: refills while it runs
    paced = simulators().model_copy(update={"units_per_min": 600.0})
    await run_balanced(agent_config_factory, paced, units)
    assert outcome_groups == [1] * units  # every unit's outcome went to the disk on its own
    assert company_waits and set(company_waits) == {0.0}  # no commit or refill waited
