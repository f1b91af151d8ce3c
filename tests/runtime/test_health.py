"""Readiness: named checks, each bounded in time; /readyz answers 200 or 503 with their results;
/health never runs them."""

from __future__ import annotations

import asyncio

import aiohttp

from nexusd.runtime.health import Readiness
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


async def test_checks_report_ok_failure_and_timeout():
    async def ok():
        return "detail"

    async def broken():
        raise ConnectionError("backend down")

    async def hangs():
        await asyncio.Event().wait()

    report = await Readiness({"ok": ok, "broken": broken, "hangs": hangs}, timeout=0.2).run()
    assert not report.ready
    assert report.checks["ok"]["ok"] and report.checks["ok"]["detail"] == "detail"
    assert report.checks["broken"] == {"ok": False, "error": "backend down"}
    assert report.checks["hangs"] == {"ok": False, "error": "timed out after 0.2s"}
    assert "broken: backend down" in report.failing()
    assert report.body()["status"] == "not_ready"


async def test_no_checks_means_ready_and_warnings_are_reported():
    readiness = Readiness({})
    readiness.warnings.append("memory: declared 1Gi, cgroup enforces 2Gi")
    report = await readiness.run()
    assert report.ready
    assert report.body() == {"status": "ready", "checks": {},
                             "warnings": ["memory: declared 1Gi, cgroup enforces 2Gi"]}


async def test_readyz_follows_the_checks_and_health_does_not():
    async with serve_inprocess(ProbeService) as server, aiohttp.ClientSession(server.url) as http:
        async with http.get("/readyz") as r:
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "ready" and body["checks"]["probe"]["ok"] is True
        server.service.healthy = False
        async with http.get("/readyz") as r:
            assert r.status == 503
            body = await r.json()
            assert body["status"] == "not_ready"
            assert body["checks"]["probe"] == {"ok": False, "error": "probe says no"}
        async with http.get("/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
