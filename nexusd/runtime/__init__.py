"""The shared runtime every nexusd service runs on (see docs/service-contract.md)."""

from nexusd.runtime.errors import ApiError, ClientGone, ErrorFormat
from nexusd.runtime.metadata import (
    Capabilities,
    Concurrency,
    ModelInfo,
    Resources,
)
from nexusd.runtime.service import Endpoint, Listener, Service
from nexusd.runtime.settings import ServiceSettings, SharedSettings
from nexusd.runtime.validation import parse_json

__all__ = [
    "ApiError",
    "Capabilities",
    "ClientGone",
    "Concurrency",
    "Endpoint",
    "ErrorFormat",
    "Listener",
    "ModelInfo",
    "Resources",
    "Service",
    "ServiceSettings",
    "SharedSettings",
    "parse_json",
]
