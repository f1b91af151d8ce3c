"""/metrics is Prometheus text that prometheus_client's parser reads, with the runtime's
request counter, latency histogram, in-flight gauge, readiness and process metrics."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


async def test_metrics_count_requests_by_route_and_status():
    async with serve_inprocess(ProbeService) as server, aiohttp.ClientSession(server.url) as http:
        for _ in range(3):
            async with http.post("/v1/items", json={"name": "a"}) as r:
                assert r.status == 200
        async with http.post("/v1/items", json={}) as r:
            assert r.status == 400
        async with http.get("/v1/nope") as r:
            assert r.status == 404
        async with http.get("/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {(s.labels["route"], s.labels["status"]): s.value
              for s in families["nexus_http_requests"].samples if s.name.endswith("_total")}
    assert counts[("/v1/items", "200")] == 3
    assert counts[("/v1/items", "400")] == 1
    assert counts[("unmatched", "404")] == 1
    hist = [s for s in families["nexus_http_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["route"] == "/v1/items"]
    assert hist[0].value == 4
    inflight = families["nexus_http_inflight_requests"].samples[0].value
    assert inflight == 1  # the /metrics request itself
    assert families["nexus_ready"].samples[0].value == 1
    assert "process_resident_memory_bytes" in families or "process_resident_memory" in families


async def test_services_register_their_own_metrics_on_the_registry():
    async with serve_inprocess(ProbeService) as server:
        from prometheus_client import Counter

        Counter("probe_things", "things", registry=server.runtime.metrics.registry).inc(2)
        body, _ = server.runtime.metrics.render()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["probe_things"].samples[0].value == 2


def test_service_info_names_the_running_instance(tmp_path):
    # Defect: nexus_service_info was created but never set, so /metrics had the family and no sample.
    from tests.helpers.proc import run_service

    with run_service("template", tmp_path) as svc:
        metadata = svc.get("/v1/metadata")[1]
        text = svc.get("/metrics")[1]
    assert isinstance(metadata, dict) and isinstance(text, str)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [sample] = families["nexus_service_info"].samples
    assert sample.value == 1
    assert sample.labels == {"service": "template", "version": metadata["service"]["version"],
                             "instance_id": metadata["service"]["instance_id"]}
