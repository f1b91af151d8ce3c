"""The gateway's Prometheus metrics, on the runtime's registry (served on 8801 /metrics).

The per-request series are plain dicts read at scrape time (`RelayStats`): a path that should
cost ~100-200 µs of CPU in total has no room for a lock per update.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from nexusd.runtime.metrics import LATENCY_BUCKETS


class RelayStats(Collector):
    """The per-request series (requests, per-key requests and tokens, upstream latency, time to
    first byte) in plain dicts, turned into Prometheus families at scrape time. A
    prometheus_client child takes a lock per update; the relay runs on one event-loop thread,
    so plain ints are safe, and four locked updates a request were ~2.5 µs of CPU
    (bench/gateway's profile). Same names and labels as the Counter/Histogram they replace."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.requests: dict[tuple[str, str, int, str], int] = {}
        self.key_requests: dict[str, int] = {}
        self.key_tokens: dict[tuple[str, bytes], int] = {}  # kind as found in the answer's bytes
        self.upstream: dict[str, list[float]] = {}  # operation → per-bucket counts + [sum]
        self.first_byte: dict[str, list[float]] = {}

    def observe(self, operation: str, model: str, status: int, instance: str, key: str,
                upstream_seconds: float | None) -> None:
        k = (operation, model, status, instance)
        self.requests[k] = self.requests.get(k, 0) + 1
        self.key_requests[key] = self.key_requests.get(key, 0) + 1
        if upstream_seconds is not None:
            self._histogram(self.upstream, operation, upstream_seconds)

    def observe_first_byte(self, operation: str, seconds: float) -> None:
        self._histogram(self.first_byte, operation, seconds)

    def add_tokens(self, key: str, usage: dict[bytes, bytes]) -> None:
        """`usage`: token kind → count, both as the bytes matched in the answer."""
        tokens = self.key_tokens
        for kind, n in usage.items():
            k = (key, kind)
            tokens[k] = tokens.get(k, 0) + int(n)

    def _histogram(self, hists: dict[str, list[float]], label: str, seconds: float) -> None:
        hist = hists.get(label)
        if hist is None:
            hist = hists[label] = [0.0] * (len(self.buckets) + 2)
        hist[bisect.bisect_left(self.buckets, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("nexus_gateway_requests", "Proxied requests",
                                       labels=["operation", "model", "status", "instance"])
        for (op, model, status, inst), n in list(self.requests.items()):
            requests.add_metric([op, model, str(status), inst], n)
        yield requests
        keys = CounterMetricFamily("nexus_gateway_key_requests", "Requests per API key", labels=["key"])
        for key, n in list(self.key_requests.items()):
            keys.add_metric([key], n)
        yield keys
        tokens = CounterMetricFamily("nexus_gateway_key_tokens", "Tokens per API key, from responses' usage",
                                     labels=["key", "kind"])
        for (key, kind), n in list(self.key_tokens.items()):
            tokens.add_metric([key, kind.decode()], n)
        yield tokens
        yield self._family("nexus_gateway_upstream_seconds", "Upstream time to response headers", self.upstream)
        yield self._family("nexus_gateway_stream_first_byte_seconds",
                           "Streams: time from request to the first body byte", self.first_byte)

    def _family(self, name: str, doc: str, hists: dict[str, list[float]]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["operation"])
        bounds = [str(b) for b in self.buckets] + ["+Inf"]
        for op, hist in list(hists.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(bounds, hist[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([op], buckets, hist[-1])
        return family


class GatewayMetrics:
    """The hot-path series live in `RelayStats` (lock-free); the rare events (ejections,
    retries, discovery, auth refusals) are ordinary prometheus_client counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.relay = RelayStats()
        registry.register(self.relay)
        self.observe = self.relay.observe
        self.observe_first_byte = self.relay.observe_first_byte
        self.add_tokens = self.relay.add_tokens
        self.ejections = Counter("nexus_gateway_ejections", "Instances ejected after failures",
                                 ["instance"], registry=registry)
        self.retries = Counter("nexus_gateway_retries", "Requests retried on another instance after a connect error",
                               registry=registry)
        self.fallbacks = Counter("nexus_gateway_fallbacks", "Requests passed to the next model of their "
                                 "[fallbacks] list, by the model that failed and the one tried next",
                                 ["model", "fallback"], registry=registry)
        self.discovery_events = Counter("nexus_gateway_discovery_events",
                                        "Discovery events (added, removed, relist, watch_error, ...)",
                                        ["event"], registry=registry)
        self.rejected = Counter("nexus_gateway_auth_rejections", "Requests refused by auth or limits",
                                ["reason"], registry=registry)


class InstanceCollector:
    """In-flight, queue depth and instances by state, read at scrape time from the live
    instance objects (no gauge updates on the request path)."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        inflight = GaugeMetricFamily("nexus_gateway_instance_inflight", "Requests in flight per instance",
                                     labels=["instance", "service"])
        queued = GaugeMetricFamily("nexus_gateway_instance_queue_depth", "Requests waiting per instance",
                                   labels=["instance", "service"])
        states = GaugeMetricFamily("nexus_gateway_instances", "Instances by state", labels=["state"])
        counts: dict[str, int] = {"ready": 0, "not_ready": 0, "ejected": 0, "unknown": 0, "ignored": 0}
        for inst in self.snapshot():
            name = inst["instance_id"] or inst["base_url"]
            inflight.add_metric([name, inst["service"]], inst["outstanding"])
            queued.add_metric([name, inst["service"]], inst["queued"])
            counts[inst["state"]] = counts.get(inst["state"], 0) + 1
        for state, n in counts.items():
            states.add_metric([state], n)
        return [inflight, queued, states]
