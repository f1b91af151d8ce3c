"""The routing table: `(method, path) → operation`, `(operation, model or alias) → instances`.

Rebuilt from the ready instances' metadata whenever discovery or readiness changes, never on
the request path; a lookup is a few dict reads. Ejection is checked at pick time (balancer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.instances import Instance

# The OpenAI routes the gateway always knows (docs/gateway.md), so that a request for one of them
# with no backend up gets 503 + Retry-After rather than 404.
KNOWN_ROUTES: dict[tuple[str, str], tuple[str, bool]] = {
    ("POST", "/v1/chat/completions"): ("chat.completions", True),
    ("POST", "/v1/completions"): ("completions", True),
    ("POST", "/v1/embeddings"): ("embeddings", False),
    ("POST", "/v1/images/generations"): ("images.generate", False),
    ("POST", "/v1/audio/speech"): ("audio.speech", True),
    ("GET", "/v1/audio/voices"): ("audio.voices", False),
    ("POST", "/v1/audio/transcriptions"): ("audio.transcriptions", True),
    ("POST", "/v1/audio/translations"): ("audio.translations", False),
}
NO_INSTANCE_RETRY_AFTER = "2"


@dataclass(frozen=True, slots=True)
class Route:
    operation_id: str
    streaming: bool
    model_required: bool = False


@dataclass(slots=True)
class ModelRoute:
    model_id: str
    instances: list[Instance] = field(default_factory=list)


class RoutingTable:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {
            k: Route(op, streaming) for k, (op, streaming) in KNOWN_ROUTES.items()}
        self.paths: set[str] = {p for _, p in self.routes}
        self.by_model: dict[tuple[str, str], ModelRoute] = {}
        self.by_operation: dict[str, list[Instance]] = {}
        self.defaults: dict[str, str] = {}
        self.ops_with_models: set[str] = set()
        # model or alias -> the operations it is declared for, on every instance, ready or
        # not: 503 (serves it, none ready) vs 400 (never serves it) vs 404 (no such model)
        self.known_models: dict[str, set[str]] = {}
        self.models: list[dict[str, Any]] = []  # for /v1/models
        self.explain: Callable[[str], str] = lambda op: ""  # why no instance (gateway/diagnosis.py)

    @classmethod
    def build(cls, ready: list[Instance], known: list[Instance]) -> RoutingTable:
        table = cls()
        for inst in known:
            for m in (inst.metadata or {}).get("models", []):
                for name in (m["id"], *m.get("aliases", [])):
                    table.known_models.setdefault(name, set()).update(m.get("operations", []))
        seen_models: set[str] = set()
        for inst in ready:
            doc = inst.metadata or {}
            service = inst.service
            ops: set[str] = set()
            for ep in doc.get("endpoints", []):
                key = (ep["method"].upper(), ep["path"])
                op = ep["operation_id"]
                # A service may declare a route the pinned table knows; its own flags win.
                table.routes[key] = Route(op, bool(ep.get("streaming")), bool(ep.get("model_required")))
                table.paths.add(ep["path"])
                ops.add(op)
                table.by_operation.setdefault(op, []).append(inst)
            for m in doc.get("models", []):
                for op in m.get("operations", []):
                    if op not in ops:
                        continue
                    table.ops_with_models.add(op)
                    for name in (m["id"], *m.get("aliases", [])):
                        route = table.by_model.setdefault((op, name), ModelRoute(m["id"]))
                        if inst not in route.instances:
                            route.instances.append(inst)
                    if op in m.get("default_for", []):
                        table.defaults.setdefault(op, m["id"])
                if m["id"] not in seen_models:
                    seen_models.add(m["id"])
                    table.models.append({"id": m["id"], "object": "model",
                                         "created": int(doc.get("extra", {}).get("created", 0) or 0),
                                         "owned_by": service,  # issue 4: owned_by names the service
                                         "aliases": m.get("aliases", [])})
        return table

    def route(self, method: str, path: str) -> Route:
        route = self.routes.get((method, path))
        if route is None:
            if path in self.paths:
                allowed = sorted(m for m, p in self.routes if p == path)
                raise ApiError(405, f"Method not allowed; allowed: {', '.join(allowed)}",
                               code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
            raise ApiError(404, "Unknown route", code="not_found")
        return route

    def candidates(self, route: Route, model: str | None) -> tuple[list[Instance], str]:
        """Instances that can serve the request, and the model id it resolves to ('' if none)."""
        op = route.operation_id
        if model is None and op in self.ops_with_models:
            model = self.defaults.get(op)
            if model is None:
                raise ApiError(400, "you must provide a model parameter", param="model",
                               code="missing_required_parameter")
        if model is not None and op in self.ops_with_models:
            hit = self.by_model.get((op, model))
            if hit is None:
                raise self.unroutable(op, model)
            return hit.instances, hit.model_id
        if route.model_required and model is None:
            raise ApiError(400, "you must provide a model parameter", param="model",
                           code="missing_required_parameter")
        instances = self.by_operation.get(op)
        if not instances:
            if model is not None and self.known_models:
                raise self.unroutable(op, model)
            raise no_instance(f"No ready instance serves {op}{self.explain(op)}")
        return instances, ""

    def unroutable(self, op: str, model: str) -> ApiError:
        """Why no instance serves `model` for `op`: only a model that does serve the operation
        (on an instance not ready now) is worth a retry (503); one that never does is the
        client's mistake (400, naming what it serves), an unknown one is 404."""
        ops = self.known_models.get(model)
        if ops is None:
            return ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        if op in ops:
            return no_instance(f"No ready instance serves model '{model}'")
        serves = ", ".join(sorted(ops)) or "no operation"
        return ApiError(400, f"The model '{model}' does not support {op}; it serves: {serves}",
                        param="model", code="model_not_supported")

    def find_model(self, model: str) -> dict[str, Any] | None:
        for m in self.models:
            if m["id"] == model or model in m["aliases"]:
                return m
        return None


def no_instance(message: str) -> ApiError:
    return ApiError(503, message, code="no_instance_available",
                    headers={"Retry-After": NO_INSTANCE_RETRY_AFTER})
