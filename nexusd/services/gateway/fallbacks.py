"""Fallbacks: the `[fallbacks]` table of the upstreams file.

    [fallbacks]
    big = ["qwen3-32b", "smollm2:135m"]   # tried in order

A client may ask for the list's name (`big`: its models in order) or for a model of it
(`qwen3-32b`: then the models after it). When a model has no live instance, or an attempt fails
before the first byte reached the client (connect error, timeout, 5xx, 429, the gateway's own
queue full), the next model is tried with the body's `model` rewritten; for fallbacks this
overrides the one-retry rule, and nothing is ever retried after the first byte. A fallback
model must serve the same operation and pass the key's model scope, else it is skipped. The
answer says which model served: `model` as the upstream answered, and `X-Nexus-Model`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.balancer import Balancer
from nexusd.services.gateway.instances import Instance
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.routing import Route, no_instance

if TYPE_CHECKING:
    from nexusd.services.gateway.proxy import Proxy

log = logging.getLogger("nexusd.gateway.fallbacks")

# What "no live instance" looks like from the routing table and the balancer.
NEXT_ON_ROUTING = frozenset({404, 503})
NEXT_ON_ADMISSION = frozenset({429, 503})


class TryNext(Exception):  # noqa: N818 - a signal, not an error
    """This model's attempt failed before anything reached the client; the text says how."""


class Fallbacks:
    def __init__(self, lists: dict[str, list[str]]) -> None:
        self.lists = lists
        self.after = {m: models[i + 1:] for models in lists.values() for i, m in enumerate(models)}

    def __bool__(self) -> bool:
        return bool(self.lists)

    def chain(self, model: str) -> list[str] | None:
        """The models to try for `model`, or None when it has no fallbacks."""
        group = self.lists.get(model)
        if group is not None:
            return group
        rest = self.after.get(model)
        return [model, *rest] if rest else None


async def acquire(balancer: Balancer, inst: Instance, model_id: str) -> None:
    """The balancer's slot; its 429 (queue full) and 503 (waited too long) mean: next model."""
    try:
        await balancer.acquire(inst, model_id)
    except ApiError as exc:
        if exc.status in NEXT_ON_ADMISSION:
            raise TryNext(exc.message) from None
        raise


async def forward_chain(proxy: Proxy, request: web.Request, route: Route, chain: list[str], body: bytes,
                        key: ApiKey, requested: str, stream: bool,
                        check_scope: Callable[..., None]) -> web.StreamResponse:
    op = route.operation_id
    group = requested not in chain  # the client named the list, not a model of it
    plan: list[tuple[str, list[Instance], str]] = []
    skipped: list[ApiError] = []
    for name in chain:
        try:
            instances, model_id = proxy.table.candidates(route, name)
            check_scope(key, op, model_id, requested if group else name)
        except ApiError as exc:
            if name == requested and exc.status not in NEXT_ON_ROUTING:
                raise  # the model the client asked for is refused (scope, operation): say so
            skipped.append(exc)
            continue
        plan.append((name, instances, model_id))
    if not plan:
        if not group or all(e.status == 403 for e in skipped):
            raise skipped[0]
        raise no_instance(f"No ready instance serves a model of '{requested}' ({', '.join(chain)})")
    for n, (name, instances, model_id) in enumerate(plan):
        more = n + 1 < len(plan)
        data = body if name == requested else with_model(body, name)
        try:
            return await proxy.forward(request, route, instances, data, model_id, key, fallback=more,
                                       stream=stream)
        except TryNext as exc:
            nxt = plan[n + 1][0]
            log.warning("%s: model %s failed before answering (%s); falling back to %s", op, name, exc, nxt)
            proxy.metrics.fallbacks.labels(name, nxt).inc()
    raise AssertionError("unreachable: the last model is forwarded without fallback")


def with_model(body: bytes, model: str) -> bytes:
    return json.dumps({**json.loads(body), "model": model}).encode()
