"""May a product with this expiry date (AI 17) be packed today?

One rule for every place an order enters the agent (today the ``[batch]`` config section; later
orders from L3): a date in the past is refused, a date closer than a margin is accepted with a
warning. The expiry day itself is still a day of use, so it is not past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from edge_agent.gs1.check import Gs1DateError, expiry_date

DEFAULT_WARN_DAYS = 30


class Gs1ExpiredError(Gs1DateError):
    """The expiry date has passed: product of this batch must not be serialized or shipped."""


@dataclass(frozen=True)
class ExpiryCheck:
    expires: date
    today: date
    warn_days: int

    @property
    def days_left(self) -> int:
        return (self.expires - self.today).days

    @property
    def near(self) -> bool:
        return self.days_left < self.warn_days

    def warning(self) -> str | None:
        """A sentence for the operator when the expiry is near, else None."""
        if not self.near:
            return None
        left = "expires today" if self.days_left == 0 else f"expires in {self.days_left} day(s)"
        return (
            f"the batch {left} ({self.expires.isoformat()}), within the {self.warn_days}-day "
            "warning margin: check the order before packing"
        )


def check_expiry(
    yymmdd: str, *, today: date | None = None, warn_days: int = DEFAULT_WARN_DAYS
) -> ExpiryCheck:
    """Check an AI (17) value against ``today`` (default: the local date).

    Raises ``Gs1DateError`` for a malformed date and ``Gs1ExpiredError`` for one in the past.
    """
    today = today or date.today()
    expires = expiry_date(yymmdd, today)
    if expires < today:
        raise Gs1ExpiredError(
            f"expiry {yymmdd} ({expires.isoformat()}) is in the past (today is "
            f"{today.isoformat()}): expired product must not be packed; correct the date or "
            "the order",
            ai="17",
        )
    return ExpiryCheck(expires, today, warn_days)
