"""Which registered backends the gateway may talk to (NEXUS_GATEWAY_ALLOWED_BACKENDS).

Anyone who can write under etcd's `/nexus/services/` can register a base URL; without a
check, the gateway would send that URL its clients' requests and the internal token. The list
holds CIDRs and hostnames. An instance is allowed when every address its URL's host resolves
to is in a listed network or is an address of a listed hostname. Hostnames on both sides are
resolved at each poll, so a DNS change is followed. Unset = unrestricted (status page says so).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from nexusd.services.gateway.ratelimit import Network

log = logging.getLogger("nexusd.gateway.allowlist")
RESOLVE_TIMEOUT = 2.0


def parse_entries(entries: list[str]) -> tuple[list[Network], list[str]]:
    networks: list[Network] = []
    hosts: list[str] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not entry.replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"not a CIDR or hostname: {entry!r}") from None
            hosts.append(entry.lower())
    return networks, hosts


async def resolve(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses (empty when it does not resolve in time)."""
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError):
        return set()
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


class AllowList:
    def __init__(self, entries: list[str]) -> None:
        self.networks, self.hosts = parse_entries(entries)
        self.host_addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()

    @property
    def description(self) -> str:
        return ", ".join([str(n) for n in self.networks] + self.hosts)

    async def refresh(self) -> None:
        """Resolve the listed hostnames again (once per poll round)."""
        addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for host in self.hosts:
            addresses |= await resolve(host)
        self.host_addresses = addresses

    async def check(self, base_url: str) -> str:
        """'' when the URL's host is allowed, else why not (shown on the status page)."""
        host = urlsplit(base_url).hostname or ""
        addresses = await resolve(host)
        if not addresses:
            return f"{host or base_url} does not resolve"
        for address in addresses:
            if address not in self.host_addresses and not any(address in n for n in self.networks):
                return f"{host} ({address}) is not in NEXUS_GATEWAY_ALLOWED_BACKENDS"
        return ""
