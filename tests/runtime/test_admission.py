"""The runtime's admission (bounded slot + queue, 429 with Retry-After, gauges) and disconnect
handling (a client that leaves cancels its handler; a worker-thread job stops at its next step
and frees the slot), on a real in-process server with real clients; and the SSE helper."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.helpers.net import async_wait_for
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


async def _true(value: object) -> object:
    return value


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


async def test_queue_bound_429_and_a_leaving_client_stops_its_worker_job():
    async with serve_inprocess(ProbeService) as server:
        svc: ProbeService = server.service  # type: ignore[assignment]
        gate, url = svc.gate, server.url + "/v1/work"
        running_client, queued_client = aiohttp.ClientSession(), aiohttp.ClientSession()
        try:
            running = asyncio.create_task(running_client.post(url))
            await async_wait_for(lambda: _true(gate.running == 1), what="the first job to run")
            queued = asyncio.create_task(queued_client.post(url))
            await async_wait_for(lambda: _true(gate.waiting == 1), what="the second to queue")
            async with aiohttp.ClientSession() as http:
                async with http.post(url) as r:  # one running, one waiting: full
                    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
                    assert (await r.json())["error"]["code"] == "queue_full"
                async with http.get(server.url + "/metrics") as r:
                    text = await r.text()
            assert _metric(text, 'nexus_queue_depth{queue="probe"}') == 1
            assert _metric(text, 'nexus_queue_running{queue="probe"}') == 1
            assert _metric(text, 'nexus_queue_rejected_total{queue="probe"}') == 1

            # The waiting client leaves: it leaves the line; the job keeps running.
            queued.cancel()
            await queued_client.close()
            await async_wait_for(lambda: _true(gate.waiting == 0), what="the waiter to leave the line")
            assert gate.running == 1 and svc.cancelled_jobs == 0
            # The running client leaves: its thread stops at its next step and frees the slot.
            running.cancel()
            await running_client.close()
            await async_wait_for(lambda: _true(svc.cancelled_jobs == 1 and gate.running == 0),
                                 what="the worker job to stop and free the slot")
        finally:
            await running_client.close()
            await queued_client.close()
        svc.finish.set()
        async with aiohttp.ClientSession() as http:
            async with http.post(url) as r:  # free again
                assert r.status == 200 and await r.json() == {"result": "done"}
            async with http.get(server.url + "/metrics") as r:
                text = await r.text()
        # one code for a client that went away, in the metrics (and the access log)
        assert _metric(text, 'nexus_http_requests_total{method="POST",route="/v1/work",status="499"}') == 2


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_sse_helper_frames_events_done_and_errors(fmt):
    async with serve_inprocess(ProbeService) as server, aiohttp.ClientSession() as http:
        async with http.get(server.url + "/v1/events", params={"fmt": fmt}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
            events = (await r.text()).split("\n\n")
    assert events[0] == 'data: {"n":1}' and events[1] == 'event: tick\ndata: {"n":2}'
    assert events[3] == "data: [DONE]" and events[4] == ""
    if fmt == "openai":
        assert events[2].startswith("data: ")
        err = json.loads(events[2][6:])["error"]
        assert err["code"] == "upstream_disconnected" and err["type"] == "server_error"
    else:
        name, data = events[2].split("\n")
        assert name == "event: error"
        assert json.loads(data[6:]) == {"type": "error", "error": {"type": "api_error",
                                                                   "message": "upstream went away"}}
