"""Token budgets per key (`nexusd keys add|update NAME --budget N/day` or `N/month`): tokens per
UTC day or UTC calendar month, over every gateway, counted from the usage ledger (ledger.py).

Admission: spent in the period (the others' last records + this gateway's live counts) + this
gateway's reservations in flight + this request's reservation (quotas.estimate) > N → 429
`rate_limit_exceeded`, Retry-After = seconds until the period rolls (UTC midnight, or the first
of the next month). Settled with the actual usage.

Overshoot bound: a gateway sees the others' use as of their last write and its last read, so
with G gateways each admitting at most A tokens/s for the key, usage can pass N by at most
`(G − 1) × A × 2 × period` (a write and a read apart) plus the tokens of requests in flight on
the other gateways and whatever a settled request used beyond its reservation.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from nexusd.runtime import ApiError

PERIODS = ("day", "month")


def parse_budget(text: str) -> tuple[int, str]:
    """`N/day` or `N/month` → (N, period); ValueError says what is wrong."""
    amount, sep, period = str(text).strip().partition("/")
    if not sep or period not in PERIODS:
        raise ValueError(f"budget must be N/day or N/month (tokens), got {text!r}")
    if not amount.strip().isdigit() or int(amount) < 1:
        raise ValueError(f"budget must be a whole number of tokens >= 1 per {period}, got {text!r}")
    return int(amount), period


def format_budget(budget: tuple[int, str]) -> str:
    return f"{budget[0]}/{budget[1]}"


def period_bounds(period: str, now: float) -> tuple[datetime, datetime]:
    """The UTC period holding `now`: [start, end)."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def period_days(period: str, now: float) -> tuple[str, str]:
    """First and last day (YYYY-MM-DD) of the period holding `now`."""
    start, end = period_bounds(period, now)
    return start.strftime("%Y-%m-%d"), (end - timedelta(days=1)).strftime("%Y-%m-%d")


def until_roll(period: str, now: float) -> int:
    """Whole seconds until the period rolls (at least 1)."""
    return max(1, math.ceil(period_bounds(period, now)[1].timestamp() - now))


def check(key, used: int, reserve: int, now: float) -> None:  # noqa: ANN001 - an ApiKey with a budget
    amount, period = key.budget
    if used + reserve > amount:
        raise ApiError(429, f"Token budget of {amount} tokens per {period} reached for this key",
                       code="rate_limit_exceeded", headers={"Retry-After": str(until_roll(period, now))})
