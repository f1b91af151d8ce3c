"""Prometheus metrics on one registry per process; services add theirs with `metrics.registry`."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RequestStats(Collector):
    """Per-request counters kept in plain dicts and turned into Prometheus families at scrape
    time. prometheus_client's Counter/Histogram take a lock per update (~2 µs each, three per
    request with the in-flight gauge); the event loop is one thread, so plain ints are safe."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[str, str, int], int] = {}
        self.histograms: dict[str, list[float]] = {}  # route → per-bucket counts + [sum] at the end
        self.inflight = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.histograms.get(route)
        if hist is None:
            hist = self.histograms[route] = [0.0] * (len(self.buckets) + 2)
        hist[bisect.bisect_left(self.buckets, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("nexus_http_requests", "HTTP requests handled",
                                       labels=["route", "method", "status"])
        for (route, method, status), n in list(self.counts.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("nexus_http_request_duration_seconds",
                                        "Time until the handler returned the response", labels=["route"])
        for route, hist in list(self.histograms.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            bounds = [str(b) for b in self.buckets] + ["+Inf"]
            for bound, count in zip(bounds, hist[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, hist[-1])
        yield latency
        yield GaugeMetricFamily("nexus_http_inflight_requests", "Requests being handled", value=self.inflight)


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http = RequestStats()
        self.registry.register(self.http)
        self.observe = self.http.observe
        self.ready = Gauge("nexus_ready", "1 when /readyz passes", registry=self.registry)
        self.info = Gauge("nexus_service_info", "Service identity", ["service", "version", "instance_id"],
                          registry=self.registry)

    def identify(self, service: str, version: str, instance_id: str) -> None:
        """Set nexus_service_info{service,version,instance_id} = 1 (created above, set once here)."""
        self.info.labels(service=service, version=version, instance_id=instance_id).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
