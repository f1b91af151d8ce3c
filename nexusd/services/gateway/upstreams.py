"""Plain OpenAI-compatible upstreams (vLLM, llama-server, a raw Ollama daemon, a hosted
provider): the `[upstreams.<name>]` and `[fallbacks]` tables of the upstreams file
(NEXUS_GATEWAY_UPSTREAMS, default /etc/nexus/upstreams.toml, optional).

Such a server has no /readyz nor /v1/metadata. Each upstream becomes an `Instance` like any
other, with metadata made up here (its models: from the file, else `GET {base_url}/models`;
the declared operations) and readiness from `GET {base_url}/models` with its key, polled at its
own `poll_interval` (a hosted provider is not polled every 2 s). The proxy sends it
`{base_url}/<rest>` for the client's `/v1/<rest>`, its own key in `Authorization`, and never the
client's credentials nor the internal token.

One parse of the whole file (the `[aliases]` table is read from the same document); a broken file
at start is a ConfigError naming the line (exit 78), on SIGHUP the previous one stays, logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nexusd.runtime.metadata import (
    Capabilities,
    Concurrency,
    EndpointInfo,
    Limits,
    MetadataDocument,
    ModelInfo,
    Resources,
    ServiceInfo,
)
from nexusd.runtime.settings import ConfigError
from nexusd.services.gateway.aliases import AliasError, parse_aliases
from nexusd.services.gateway.instances import Instance, InstanceSet

log = logging.getLogger("nexusd.gateway.upstreams")

# operation -> (method, client path, streams): what a plain upstream may be declared to serve.
OPERATIONS: dict[str, tuple[str, str, bool]] = {
    "chat.completions": ("POST", "/v1/chat/completions", True),
    "completions": ("POST", "/v1/completions", True),
    "embeddings": ("POST", "/v1/embeddings", False),
    "images.generate": ("POST", "/v1/images/generations", False),
    "audio.speech": ("POST", "/v1/audio/speech", True),
}
Operation = Literal["chat.completions", "completions", "embeddings", "images.generate", "audio.speech"]
DEFAULT_OPERATIONS: list[Operation] = ["chat.completions", "completions", "embeddings"]
SOURCE = "upstream:"  # Instance.sources entry and InstanceSet key prefix
MAX_MODELS_DOCUMENT = 4 << 20  # a provider's /models can be long, not endless


class UpstreamsFileError(ValueError):
    """The file cannot be used; the text is one line naming the file and line."""


class UpstreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The OpenAI base URL, as a client would be given it (…/v1)")
    api_key_env: str | None = None
    api_key_file: str | None = None
    models: list[str] | None = Field(None, min_length=1)
    operations: list[Operation] = Field(default_factory=lambda: list(DEFAULT_OPERATIONS), min_length=1)
    max_inflight: int | None = Field(None, ge=1)
    max_queue: int | None = Field(None, ge=0)
    timeout: float | None = Field(None, gt=0)
    poll_interval: float = Field(30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("models")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not m or len(m) > 256 for m in v):
            raise ValueError("model names are non-empty strings of at most 256 characters")
        return v


class UpstreamsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    aliases: Any = Field(default_factory=dict)  # checked by aliases.py


@dataclass(eq=False)
class Upstream:
    """One upstream as loaded: its settings and its key (never logged nor shown)."""

    name: str
    config: UpstreamConfig
    key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        c = self.config
        self.base_url = c.base_url
        self.auth: dict[str, str] = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=c.timeout) if c.timeout else None
        self.include_usage = {"chat.completions", "completions"} & set(c.operations)

    def url(self, path: str) -> str:
        """The client's /v1/<rest> is the upstream's {base_url}/<rest>."""
        return self.base_url + (path[3:] if path.startswith("/v1/") else path)

    def headers(self, ours: Mapping[str, str]) -> dict[str, str]:
        """What the proxy would send a Nexus instance, minus the internal token, plus our key."""
        headers = dict(ours)
        headers.pop("X-Nexus-Internal-Token", None)
        if self.auth:
            headers.update(self.auth)
        return headers

    def same_as(self, other: Upstream) -> bool:
        return self.config == other.config and self.key == other.key


@dataclass
class Loaded:
    upstreams: dict[str, Upstream]
    fallbacks: dict[str, list[str]]
    aliases: dict[str, str]


# --- the file ------------------------------------------------------------------------------
def load_file(path: Path, environ: Mapping[str, str] | None = None) -> Loaded:
    """The whole upstreams file; an absent file is an empty one. Raises UpstreamsFileError."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Loaded({}, {}, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise UpstreamsFileError(f"{path}: cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamsFileError(f"{path}: not valid TOML: {exc}") from None
    try:
        doc = UpstreamsDocument.model_validate(raw)
    except ValidationError as exc:
        # A misspelt key explains the "field required" beside it: name it first.
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        loc = tuple(str(p) for p in err["loc"])
        raise UpstreamsFileError(f"{path}:{line_of(text, loc)}: {'.'.join(loc)}: {err['msg']}") from None
    upstreams: dict[str, Upstream] = {}
    for name, config in doc.upstreams.items():
        where = f"{path}:{line_of(text, ('upstreams', name))}: upstreams.{name}"
        upstreams[name] = Upstream(name, config, read_key(config, where, path.parent, environ))
    try:
        aliases = parse_aliases(doc.aliases, f"{path}:{line_of(text, ('aliases',))}")
    except AliasError as exc:
        raise UpstreamsFileError(str(exc)) from None
    declared = {m for u in doc.upstreams.values() for m in u.models or []} | set(aliases)
    check_fallbacks(doc.fallbacks, lambda name: f"{path}:{line_of(text, ('fallbacks', name))}: fallbacks.{name}",
                    declared)
    return Loaded(upstreams, doc.fallbacks, aliases)


def read_key(config: UpstreamConfig, where: str, here: Path, environ: Mapping[str, str]) -> str:
    if config.api_key_env and config.api_key_file:
        raise UpstreamsFileError(f"{where}: api_key_env and api_key_file: give one")
    if config.api_key_env:
        key = environ.get(config.api_key_env, "").strip()
        if not key:
            raise UpstreamsFileError(f"{where}: api_key_env: ${config.api_key_env} is not set")
    elif config.api_key_file:
        # Relative: a systemd credential (LoadCredential=), else next to the upstreams file.
        base = Path(environ.get("CREDENTIALS_DIRECTORY") or here)
        file = base / config.api_key_file
        try:
            key = file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UpstreamsFileError(f"{where}: api_key_file {file}: cannot read: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None
        if not key:
            raise UpstreamsFileError(f"{where}: api_key_file {file} is empty")
    else:
        return ""
    if not (key.isascii() and key.isprintable()):
        raise UpstreamsFileError(f"{where}: the key has characters an HTTP header cannot carry")
    return key


def check_fallbacks(lists: dict[str, list[str]], where: Callable[[str], str], names: set[str]) -> None:
    """`names`: the models and aliases the file declares; a list's name must be none of them (a
    request for that name would mean the list, and the model or alias would be unreachable)."""
    tail_of: dict[str, tuple[str, list[str]]] = {}  # model -> (first list naming it, what follows it)
    for name, models in lists.items():
        if name in names:
            raise UpstreamsFileError(f"{where(name)}: {name!r} is already a model or an alias; name the list otherwise")
        if not models or any(not isinstance(m, str) or not m or len(m) > 256 for m in models):
            raise UpstreamsFileError(f"{where(name)}: a list of one or more model names")
        if len(set(models)) != len(models):
            raise UpstreamsFileError(f"{where(name)}: a model is listed twice")
        for i, m in enumerate(models):
            if m in lists:
                raise UpstreamsFileError(f"{where(name)}: {m!r} is a fallback list; name models")
            first, tail = tail_of.setdefault(m, (name, models[i + 1:]))
            if tail != models[i + 1:]:
                # A client asking for `m` gets what follows it: that must not depend on the list.
                raise UpstreamsFileError(f"{where(name)}: {m!r} is followed by other models in "
                                         f"fallbacks.{first}; a model in several lists needs the same ones after it")


_HEADER = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=')


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', dotted))


def line_of(text: str, loc: tuple[str, ...]) -> int:
    """The line where the longest defined prefix of `loc` is (a table header or a key); 1 when
    none is found. Good enough for the files people write by hand."""
    best, best_len = 1, 0
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _parts(header.group(1))
            path = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            path = table + _parts(key.group(1))
        n = len(path)
        if best_len < n <= len(loc) and path == loc[:n]:
            best, best_len = number, n
    return best


# --- the instances -------------------------------------------------------------------------
class UpstreamSet:
    """The upstreams' instances in the gateway's InstanceSet (key `upstream:<name>`), each
    polled by a task of its own: `GET {base_url}/models` every `poll_interval` when ready,
    every `retry` seconds when not."""

    def __init__(self, instances: InstanceSet, *, retry: float, on_change: Callable[[], None]) -> None:
        self.instances = instances
        self.retry = retry
        self.on_change = on_change
        self.loaded = Loaded({}, {}, {})
        self.session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._unpolled: set[str] = set()
        self.polled_once = asyncio.Event()
        self.polled_once.set()

    def load(self, path: Path, *, at_start: bool) -> bool:
        """(Re)read the file; at start a broken one is a ConfigError, later it is logged and
        the previous one stays. True when a new one is in force."""
        try:
            loaded = load_file(path)
        except UpstreamsFileError as exc:
            if at_start:
                raise ConfigError(f"NEXUS_GATEWAY_UPSTREAMS: {exc}") from None
            log.error("upstreams file not reloaded, keeping the previous one: %s", exc)
            return False
        self.loaded = loaded
        if loaded.upstreams:
            log.info("loaded %d plain upstreams (%s)", len(loaded.upstreams), ", ".join(loaded.upstreams))
        if self.session is not None:
            self.apply()
        return True

    async def start(self) -> None:
        # Our own session: no default headers, so nothing meant for Nexus instances leaks here.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15, sock_connect=5),
                                             cookie_jar=aiohttp.DummyCookieJar())
        self.apply()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self.session is not None:
            await self.session.close()

    def apply(self) -> None:
        """Make the instances match the loaded file: an unchanged upstream keeps its instance
        (and its counts); a changed one is repolled at once."""
        wanted = self.loaded.upstreams
        changed = False
        for key in [k for k in self.instances.instances if k.startswith(SOURCE)]:
            inst = self.instances.instances[key]
            up = wanted.get(key[len(SOURCE):])
            if up is None or inst.upstream is None or not inst.upstream.same_as(up):
                del self.instances.instances[key]
                self._tasks.pop(key).cancel()
                self._unpolled.discard(key)
                log.info("upstream %s removed", inst.name)
                changed = True
        for name, up in wanted.items():
            key = SOURCE + name
            if key in self.instances.instances:
                continue
            inst = Instance(base_url=up.base_url, sources={key}, instance_id=name, service=name, upstream=up)
            inst.max_inflight = up.config.max_inflight or self.instances.default_inflight
            inst.max_queue = self.instances.default_queue if up.config.max_queue is None else up.config.max_queue
            if up.config.models:
                inst.metadata = synthesise(up, up.config.models)  # known (503, fallbacks) before the first poll
            self.instances.instances[key] = inst
            self._unpolled.add(key)
            self.polled_once.clear()
            self._tasks[key] = asyncio.create_task(self._run(inst), name=f"gateway-upstream-{name}")
            log.info("upstream %s added: %s", name, up.base_url)
            changed = True
        if not self._unpolled:
            self.polled_once.set()
        if changed:
            self.on_change()

    async def _run(self, inst: Instance) -> None:
        key = SOURCE + inst.name
        while True:
            if await self.poll(inst):
                self.on_change()
            self._unpolled.discard(key)
            if not self._unpolled:
                self.polled_once.set()
            assert inst.upstream is not None
            await asyncio.sleep(inst.upstream.config.poll_interval if inst.ready else self.retry)

    async def poll(self, inst: Instance) -> bool:
        """`GET {base_url}/models` with the key; True when what it can serve changed."""
        up = inst.upstream
        assert up is not None and self.session is not None
        before = (inst.ready, id(inst.metadata))
        try:
            async with self.session.get(up.base_url + "/models", headers=up.auth, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_MODELS_DOCUMENT + 1)
                if resp.status != 200:
                    raise ValueError(f"GET /models answered {resp.status}")
            ids = up.config.models or model_ids(body)
            if inst.metadata is None or [m["id"] for m in inst.metadata["models"]] != ids:
                inst.metadata = synthesise(up, ids)
            inst.ready, inst.last_error = True, ""
            if inst.failures and 0 < inst.ejected_until <= time.monotonic():
                # Back after its cool-down. Only then: /models answering says nothing about the
                # 5xx its completions may be giving, which must keep counting towards ejection.
                inst.failures, inst.ejected_until = 0, 0.0
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if inst.ready:
                log.warning("upstream %s not ready: %s", inst.name, exc)
            inst.ready = False
            inst.last_error = f"{type(exc).__name__}: {exc}"[:200]
        return before != (inst.ready, id(inst.metadata))


def model_ids(body: bytes) -> list[str]:
    """The ids of an OpenAI `GET /models` answer (`{"data": [{"id": ...}]}`)."""
    if len(body) > MAX_MODELS_DOCUMENT:
        raise ValueError(f"GET /models is larger than {MAX_MODELS_DOCUMENT} bytes")
    doc = json.loads(body)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("GET /models: no data list")
    ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and 0 < len(m["id"]) <= 256]
    return list(dict.fromkeys(ids))


def synthesise(up: Upstream, models: list[str]) -> dict[str, Any]:
    """The /v1/metadata the upstream would declare, in the runtime's own model (routing reads it
    like any instance's)."""
    c = up.config
    ops: list[str] = list(dict.fromkeys(c.operations))
    doc = MetadataDocument(
        service=ServiceInfo(name=up.name, version="", instance_id=up.name),
        description=f"plain OpenAI-compatible upstream {up.base_url}",
        capabilities=Capabilities(domains=["upstream"], streaming=any(OPERATIONS[o][2] for o in ops)),
        endpoints=[EndpointInfo(method=OPERATIONS[o][0], path=OPERATIONS[o][1], operation_id=o,
                                streaming=OPERATIONS[o][2]) for o in ops],
        models=[ModelInfo(id=m, operations=ops, owned_by=up.name) for m in models],
        concurrency=Concurrency(max_inflight=c.max_inflight, max_queue=c.max_queue or 0) if c.max_inflight else None,
        resources=Resources(), limits=Limits(),
    )
    return doc.model_dump(mode="json")
