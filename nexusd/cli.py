"""`nexusd` command line. Subcommands of later features live in their own modules and are
listed in EXTENSIONS; each exposes `add_parser(subparsers)` and sets `func` on its parser."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from nexusd import __version__
from nexusd.services import load_service, service_names

EXTENSIONS: list[str] = [
    "nexusd.dev.command",
    "nexusd.demo",
    "nexusd.status",
    "nexusd.units.cli",
    "nexusd.services.gateway.cli",
    "nexusd.authoring.cli",
]


def _service(name: str):
    try:
        return load_service(name)
    except KeyError:
        raise SystemExit(f"nexusd: unknown service {name!r}; known: {', '.join(service_names())}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from nexusd.runtime.server import main as run_main

    return run_main(_service(args.service))


def cmd_list(args: argparse.Namespace) -> int:
    for name in service_names():
        cls = _service(name)
        print(f"{name:<10} {cls.description}")
    return 0


def cmd_metadata(args: argparse.Namespace) -> int:
    from nexusd.runtime.app import metadata_document
    from nexusd.runtime.cgroup import compare
    from nexusd.runtime.context import Runtime
    from nexusd.runtime.settings import ConfigError, SharedSettings, load_settings

    cls = _service(args.service)
    try:
        shared = load_settings(SharedSettings)
        settings = load_settings(cls.Settings)
    except ConfigError as exc:
        print(f"nexusd: invalid configuration: {exc}", file=sys.stderr)
        return 78
    runtime = Runtime(cls.name, shared)
    service = cls(settings, shared, runtime)
    runtime.limits = compare(service.resources)
    print(json.dumps(metadata_document(service).model_dump(mode="json"), indent=2))
    return 0


def cmd_env_example(args: argparse.Namespace) -> int:
    from nexusd.runtime.envfile import env_example

    print(env_example(_service(args.service)), end="")
    return 0


def build_parser(extensions: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexusd", description="AI HTTP services as systemd units")
    parser.add_argument("--version", action="version", version=f"nexusd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one service in the foreground (as systemd does)")
    p.add_argument("service")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("list", help="list the services this installation knows")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("metadata", help="print a service's /v1/metadata document without serving")
    p.add_argument("service")
    p.set_defaults(func=cmd_metadata)
    p = sub.add_parser("env-example", help="print a service's .env.example, generated from its settings")
    p.add_argument("service")
    p.set_defaults(func=cmd_env_example)
    for module in EXTENSIONS if extensions else ():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `run` is what systemd starts: skip importing the other commands (start-up time, RSS).
    args = build_parser(extensions=argv[:1] != ["run"]).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
