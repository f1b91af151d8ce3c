"""Liveness and readiness. `/health` never touches dependencies; `/readyz` runs the service's
named checks, each bounded in time, and READY=1 waits on the same checks (svcs-style pings)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from nexusd.runtime.service import Check

CHECK_TIMEOUT = 4.0  # seconds per check; all checks run concurrently, so /readyz stays < 5 s


@dataclass
class ReadinessReport:
    ready: bool
    checks: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": "ready" if self.ready else "not_ready", "checks": self.checks}
        if self.warnings:
            doc["warnings"] = self.warnings
        return doc

    def failing(self) -> str:
        return "; ".join(f"{n}: {c.get('error')}" for n, c in self.checks.items() if not c["ok"])


class Readiness:
    def __init__(self, checks: dict[str, Check], timeout: float = CHECK_TIMEOUT) -> None:
        self.checks = checks
        self.timeout = timeout
        self.warnings: list[str] = []
        self.gave_up: str | None = None  # set when READY=1 was sent at the start timeout

    async def _run_one(self, check: Check) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            detail = await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return {"ok": False, "error": f"timed out after {self.timeout:g}s"}
        except Exception as exc:  # noqa: BLE001 - a failing check is data, not a crash
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        result: dict[str, Any] = {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
        if detail:
            result["detail"] = detail
        return result

    async def run(self) -> ReadinessReport:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_one(self.checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        warnings = list(self.warnings)
        if self.gave_up:
            warnings.append(self.gave_up)
        return ReadinessReport(all(r["ok"] for r in results), checks, warnings)
