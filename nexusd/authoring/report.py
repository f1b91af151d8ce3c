"""What `nexusd check` reports: one row per check (pass, FAIL, skip, with a detail), as a table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PASS, FAIL, SKIP = "pass", "FAIL", "skip"


class Failed(Exception):
    """A check found a contract violation; the message says which."""


class Skipped(Exception):
    """A check cannot run here; the message says why."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""


@dataclass
class Report:
    service: str
    target: str
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == FAIL]

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def table(self) -> str:
        width = max((len(r.name) for r in self.results), default=10)
        lines = [f"nexusd check {self.service}: {self.target}"]
        lines += [f"  {r.status.upper():<4}  {r.name:<{width}}  {r.detail}" for r in self.results]
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, SKIP)}
        lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n".join(lines)


def run_check(name: str, fn: Callable[[], str]) -> Result:
    """One row: fn's detail string, or why it failed or was skipped."""
    try:
        return Result(name, PASS, fn())
    except Skipped as exc:
        return Result(name, SKIP, str(exc))
    except Failed as exc:
        return Result(name, FAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash in one check is that check's failure
        return Result(name, FAIL, f"{type(exc).__name__}: {exc}")
