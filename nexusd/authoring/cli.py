"""`nexusd new` and `nexusd check` (listed in nexusd.cli.EXTENSIONS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_new(args: argparse.Namespace) -> int:
    from nexusd.authoring.new import NewServiceError, write_package

    try:
        root = write_package(args.name, Path(args.dir), args.port)
    except NewServiceError as exc:
        print(f"nexusd new: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root}\nnext:\n  pip install -e '{root}[test]'\n  nexusd check {args.name}")
    return 0


def _pairs(values: list[str], sep: str, what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, found, rest = value.partition(sep)
        if not found or not key.strip():
            raise SystemExit(f"nexusd check: {what} {value!r} is not KEY{sep}VALUE")
        out[key.strip()] = rest.strip() if sep == ":" else rest
    return out


def cmd_check(args: argparse.Namespace) -> int:
    from nexusd.authoring.check import main

    return main(args.service, args.url, args.obs_url, _pairs(args.env, "=", "--env"),
                _pairs(args.header, ":", "--header"))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("new", help="write a new service package (pyproject, module, tests, README)")
    p.add_argument("name", help="service name: lower-case letters, digits, hyphens (e.g. demo-svc)")
    p.add_argument("--dir", default=".", help="directory to create NAME/ in (default: here)")
    p.add_argument("--port", type=int, help="default port (default: derived from the name, 9100-9899)")
    p.set_defaults(func=cmd_new)
    p = subparsers.add_parser("check", help="run the service contract against a service; a table, "
                                            "non-zero exit on any failure")
    p.add_argument("service")
    p.add_argument("--url", help="check the running service at this base URL instead of starting it")
    p.add_argument("--obs-url", help="with --url: its observability listener, when on another port")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the started service (repeatable)")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="header sent with every request, e.g. an Authorization (repeatable)")
    p.set_defaults(func=cmd_check)
