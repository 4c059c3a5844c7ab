"""Suite-wide hygiene: every test starts with the default logging set-up; driver tests also use
``no_leaks`` (tests/helpers/hygiene.py): nothing may be left running after them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.helpers.hygiene import no_leaks

__all__ = ["no_leaks"]


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    # A test that points structlog at a file it then closes must not break the tests after it.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
