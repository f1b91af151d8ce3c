"""What the gateway answers itself: the merged model list (`/v1/models`, `/v1/models/{id}`),
generated files routed back to the instance that made them, and the instance/route report in
its own `/v1/metadata` (8801)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.routing import Route, no_instance

if TYPE_CHECKING:
    from nexusd.services.gateway import GatewayService

FILES_ROUTE = Route("images.files", streaming=True)


def _visible(key: ApiKey | None, model: dict[str, Any]) -> bool:
    if key is None or key.models is None:
        return True
    return model["id"] in key.models or any(a in key.models for a in model["aliases"])


def _public(model: dict[str, Any]) -> dict[str, Any]:
    return {"id": model["id"], "object": "model", "created": model["created"], "owned_by": model["owned_by"]}


class Aggregation:
    def __init__(self, gateway: GatewayService) -> None:
        self.gateway = gateway

    async def list_models(self, request: web.Request) -> web.Response:
        key = request.get(API_KEY)
        data = [_public(m) for m in self.gateway.proxy.table.models if _visible(key, m)]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        model = self.gateway.proxy.table.find_model(name)
        if model is None or not _visible(request.get(API_KEY), model):
            raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return web.json_response(_public(model))

    async def image_file(self, request: web.Request) -> web.StreamResponse:
        """Capability URL: the file id names the instance that made it (and carries an
        unguessable token that instance checks), so no API key is needed here."""
        file_id = request.match_info["file_id"]
        proxy = self.gateway.proxy
        self.gateway.file_limits.check_rate(request)
        maker = file_id.partition(".")[0]  # `<instance_id>.<token>.<ext>`; ids never contain "."
        owner = [i for i in self.gateway.instances.routable() if i.instance_id == maker]
        if not owner:
            raise no_instance("The instance that generated this file is not available") \
                if any(i.instance_id == maker for i in self.gateway.instances.instances.values()) \
                else ApiError(404, "No such file", code="not_found")
        anonymous = ApiKey(id="", sha256="", name="capability-url")
        with self.gateway.file_limits.admit(maker):  # its own admission, not the generation slot
            return await proxy.forward(request, FILES_ROUTE, owner, b"", "", anonymous, slot=False)

    def report(self) -> dict[str, Any]:
        now = time.monotonic()
        table = self.gateway.proxy.table
        routes = [
            {"method": m, "path": p, "operation_id": r.operation_id, "streaming": r.streaming}
            for (m, p), r in sorted(table.routes.items())
        ]
        models = [
            {"operation_id": op, "model": name, "model_id": mr.model_id,
             "instances": [i.name for i in mr.instances]}
            for (op, name), mr in sorted(table.by_model.items())
        ]
        return {
            "instances": [i.describe(now) for i in self.gateway.instances.instances.values()],
            "routes": routes,
            "models": models,
            "defaults": dict(table.defaults),
            "etcd": self.gateway.etcd_state(),
            "allowed_backends": allow.description if (allow := self.gateway.instances.allow) else "unrestricted",
        }
