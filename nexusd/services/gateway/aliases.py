"""Gateway model aliases: the `[aliases]` table of the upstreams file (NEXUS_GATEWAY_UPSTREAMS,
default /etc/nexus/upstreams.toml, optional), so the names clients send (`claude-sonnet-4-5`,
`gpt-5`) reach a real model:

    [aliases]
    "claude-sonnet-4-5" = "smollm2:135m"
    "gpt-5" = "smollm2:135m"

Reread on SIGHUP, with the rest of the file (upstreams.py parses it once and calls
`parse_aliases`). An alias
must not name a model id or a metadata alias some backend serves (the backend's model would
become unreachable by that name): at load that is a configuration error; found later (a backend
discovered after the load) the alias is set aside, logged and shown in /v1/metadata, and the
backend's model keeps its name.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Container
from pathlib import Path

log = logging.getLogger("nexusd.gateway.aliases")


class AliasError(ValueError):
    pass


def load_aliases(path: Path) -> dict[str, str]:
    """{alias: model}; {} when the file does not exist. Raises AliasError with a one-line reason."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AliasError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AliasError(f"{path}: not valid TOML: {exc}") from None
    return parse_aliases(doc.get("aliases", {}), str(path))


def parse_aliases(table: object, where: str) -> dict[str, str]:
    """The `[aliases]` table of a parsed upstreams file (upstreams.py reads the file once)."""
    if not isinstance(table, dict):
        raise AliasError(f"{where}: [aliases] must be a table of \"alias\" = \"model\"")
    aliases: dict[str, str] = {}
    for alias, model in table.items():
        if not isinstance(model, str) or not model.strip() or len(model) > 256 or len(alias) > 256:
            raise AliasError(f"{where}: [aliases] {alias!r}: the target must be a model name (a non-empty string)")
        if model in table:
            raise AliasError(f"{where}: [aliases] {alias!r} points to another alias {model!r}; name the model")
        aliases[alias] = model
    return aliases


def conflicts(aliases: dict[str, str], served: Container[str]) -> list[str]:
    """Aliases that name a model id or metadata alias a backend serves."""
    return sorted(a for a in aliases if a in served)
