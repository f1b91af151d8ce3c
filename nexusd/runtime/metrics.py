"""Prometheus metrics on one registry per process; services add theirs with `metrics.registry`."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "nexus_http_requests", "HTTP requests handled", ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nexus_http_request_duration_seconds", "Time to the response's first byte",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inflight = Gauge("nexus_http_inflight_requests", "Requests being handled", registry=self.registry)
        self.ready = Gauge("nexus_ready", "1 when /readyz passes", registry=self.registry)
        self.info = Gauge("nexus_service_info", "Service identity", ["service", "version", "instance_id"],
                          registry=self.registry)
        # labels() costs a dict lookup and a lock; cache the children on the hot path.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
