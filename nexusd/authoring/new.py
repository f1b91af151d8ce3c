"""`nexusd new NAME`: write a ready service package from the templates in `templates/service/`
(package data; `{{placeholder}}` in names and contents). Installed with `pip install -e`, it is
listed, runnable, rendered into units and passes `nexusd check NAME` with no other step."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from nexusd import __version__

TEMPLATES = Path(__file__).with_name("templates") / "service"
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PORTS = (9100, 9900)  # generated default ports: clear of the built-in services' (DESIGN §1)


class NewServiceError(ValueError):
    """A name or directory `nexusd new` cannot use; the message says why."""


def placeholders(name: str, port: int | None = None) -> dict[str, str]:
    if not NAME.match(name) or len(name) > 40:
        raise NewServiceError(f"{name!r}: use lower-case letters, digits and single hyphens, "
                              "starting with a letter (it becomes the unit name nexus-<name>)")
    words = name.split("-")
    camel = "".join(w.capitalize() for w in words)
    if port is None:  # stable per name, so the README and the unit agree across runs
        port = PORTS[0] + zlib.crc32(name.encode()) % (PORTS[1] - PORTS[0])
    return {
        "name": name,
        "package": "_".join(words),
        "env": "_".join(words).upper(),
        "cls": f"{camel}Service",
        "settings_cls": f"{camel}Settings",
        "port": str(port),
        "nexusd_version": __version__,
    }


def fill(text: str, values: dict[str, str]) -> str:
    out = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
    return out


def render_package(name: str, port: int | None = None) -> dict[str, str]:
    """Relative path → content of every file of the package."""
    values = placeholders(name, port)
    files = {}
    for path in sorted(TEMPLATES.rglob("*.tmpl")):
        rel = fill(path.relative_to(TEMPLATES).as_posix().removesuffix(".tmpl"), values)
        files[rel] = fill(path.read_text(), values)
    return files


def write_package(name: str, directory: Path, port: int | None = None) -> Path:
    from nexusd.services import service_names

    if name in service_names():
        raise NewServiceError(f"{name!r} is already a service here; pick another name")
    files = render_package(name, port)
    root = directory / name
    if root.exists() and any(root.iterdir()):
        raise NewServiceError(f"{root} exists and is not empty")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root
