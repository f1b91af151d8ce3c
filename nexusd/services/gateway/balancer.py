"""Choosing an instance and holding a slot on it.

- Least outstanding requests by the power of two choices: sample two live instances, take the
  less busy one (Mitzenmacher; what Envoy's LEAST_REQUEST does). Cheap, and it avoids the herd
  that "always the least busy" causes when many requests see the same counts.
- A bounded slot per instance (`max_inflight` from its metadata or our default) with a bounded
  FIFO wait queue; a full queue is 429, a wait past `queue_timeout` is 503, both with Retry-After.
  A model that declares its own `concurrency` gets a second such slot on that instance, taken
  first (so requests waiting for a busy model do not hold the instance's slots).
- Passive ejection: a connect error ejects at once, consecutive 5xx (`eject_after`) too; an
  ejected instance gets no traffic for `cooldown` seconds, then the next success or the next
  ready poll clears its record.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.instances import Instance, ModelGate

EJECTING_STATUSES = frozenset({500, 502, 504})


class Balancer:
    def __init__(self, *, cooldown: float, eject_after: int, queue_timeout: float,
                 on_eject: Callable[[Instance], None] | None = None) -> None:
        self.cooldown = cooldown
        self.eject_after = eject_after
        self.queue_timeout = queue_timeout
        self.on_eject = on_eject or (lambda _inst: None)
        self._random = random.random

    def pick(self, instances: list[Instance], exclude: Instance | None = None) -> Instance | None:
        now = time.monotonic()
        n = len(instances)
        if n == 1:  # the common case: no list to build
            inst = instances[0]
            return inst if inst.ejected_until <= now and inst is not exclude else None
        live = [i for i in instances if i.ejected_until <= now and i is not exclude]
        n = len(live)
        if n <= 1:
            return live[0] if live else None
        a = int(self._random() * n)
        b = int(self._random() * (n - 1))
        if b >= a:
            b += 1
        x, y = live[a], live[b]
        load_x, load_y = x.outstanding + len(x.waiters), y.outstanding + len(y.waiters)
        if load_x == load_y:
            return x
        best = x if load_x < load_y else y
        if best.outstanding >= best.max_inflight:  # both busy: any live one with room?
            for inst in live:
                if inst.outstanding < inst.max_inflight:
                    return inst
        return best

    async def acquire(self, inst: Instance, model_id: str = "") -> None:
        gate = inst.model_gates.get(model_id) if inst.model_gates else None
        if gate is None:
            return await self._acquire(inst)
        await self._acquire(gate)
        try:
            await self._acquire(inst)
        except BaseException:
            self._release(gate)
            raise

    def release(self, inst: Instance, model_id: str = "") -> None:
        self._release(inst)
        gate = inst.model_gates.get(model_id) if inst.model_gates else None
        if gate is not None:
            self._release(gate)

    async def _acquire(self, inst: Instance | ModelGate) -> None:
        if inst.outstanding < inst.max_inflight and not inst.waiters:
            inst.outstanding += 1
            return
        if len(inst.waiters) >= inst.max_queue:
            raise ApiError(429, f"Instance {inst.name} is at its concurrency limit and its queue is full",
                           code="overloaded", headers={"Retry-After": "1"})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self._release(inst)  # the slot was handed to us just as we gave up: pass it on
            else:
                fut.cancel()
                try:
                    inst.waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ApiError(503, f"Timed out after {self.queue_timeout:g}s waiting for {inst.name}",
                           code="queue_timeout", headers={"Retry-After": "2"}) from None

    @staticmethod
    def _release(inst: Instance | ModelGate) -> None:
        while inst.waiters:  # hand the slot straight to the next waiter: outstanding unchanged
            fut = inst.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        inst.outstanding -= 1

    # --- passive health ----------------------------------------------------------------
    def failed(self, inst: Instance, *, connect: bool) -> None:
        inst.failures += 1
        if connect or inst.failures >= self.eject_after:
            if inst.ejected_until <= time.monotonic():
                self.on_eject(inst)
            inst.ejected_until = time.monotonic() + self.cooldown

    @staticmethod
    def succeeded(inst: Instance) -> None:
        inst.failures = 0
