"""Generated serials: every body equally likely, and each serial in exactly one epoch."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.serialgen import EPOCHS, TAG_WIDTH, SerialSpace

DIGITS = "0123456789"
GS1_SAFE = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def test_every_position_of_the_body_takes_every_character() -> None:
    # A body drawn from too small a range would leave its leading characters at the alphabet's
    # first symbol. 3000 serials of 10 digits: a digit missing at a place has p ~ 1e-137, and
    # fewer than 200 of about 300 (6 standard deviations) p ~ 1e-9 a place.
    space = SerialSpace(b"k" * 32, epoch=0)
    bodies = [space.draw(12, DIGITS)[:-TAG_WIDTH] for _ in range(3000)]
    for place in range(12 - TAG_WIDTH):
        seen = Counter(body[place] for body in bodies)
        assert set(seen) == set(DIGITS)
        assert min(seen.values()) > 200  # about 300 each


@settings(max_examples=50, deadline=None)
@given(
    epoch=st.integers(0, EPOCHS - 1),
    length=st.integers(TAG_WIDTH + 1, 20),
    alphabet=st.sampled_from([DIGITS, GS1_SAFE]),
)
def test_a_drawn_serial_belongs_to_its_epoch(epoch: int, length: int, alphabet: str) -> None:
    space = SerialSpace(b"key" * 8, epoch=epoch)
    serial = space.draw(length, alphabet)
    assert len(serial) == length
    assert set(serial) <= set(alphabet)
    assert space.epoch_of(serial, alphabet) == epoch
