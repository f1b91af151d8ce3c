"""`nexusd units render|install|uninstall` (listed in nexusd.cli.EXTENSIONS)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nexusd.units.etcd import DEFAULT_ETCD
from nexusd.units.render import DEFAULT_NEXUSD, MARKER, render_all


def write_tree(out: Path, files: dict[str, str]) -> list[Path]:
    """Write files under out and remove our stale ones (a service that no longer exists)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in sorted(out.rglob("*"), reverse=True):
        rel = old.relative_to(out).as_posix()
        if old.is_file() and rel not in files and MARKER in old.read_text(errors="replace")[:4096]:
            old.unlink()
        elif old.is_dir() and not any(old.iterdir()):
            old.rmdir()
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _instances(args: argparse.Namespace) -> tuple[dict[str, list[int]], dict[str, int]]:
    from nexusd.units.instances import parse_instances, parse_port_bases

    return parse_instances(args.instances), parse_port_bases(args.port_base)


def cmd_render(args: argparse.Namespace) -> int:
    from nexusd.units.instances import InstanceError

    groups = [g for g in args.groups.split(",") if g] if args.groups else []
    try:
        instances, bases = _instances(args)
        files = render_all(args.nexusd, groups, args.service or None, etcd=None if args.no_etcd else args.etcd,
                           instances=instances, port_bases=bases)
    except InstanceError as exc:
        print(f"nexusd units: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        for rel, text in files.items():
            print(f"### {rel}\n{text}")
        return 0
    for path in write_tree(Path(args.out), files):
        print(path)
    return 0


def cmd_packaging(args: argparse.Namespace) -> int:
    from nexusd.units.packaging import SYSUSERS, TMPFILES, env_examples, manifest

    out = Path(args.out)
    files = {"sysusers.d/nexus.conf": SYSUSERS, "tmpfiles.d/nexus.conf": TMPFILES}
    files.update({f"env/{name}": text for name, text in env_examples().items()})
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
        print(out / rel)
    if args.manifest:
        Path(args.manifest).write_text(manifest())
        print(args.manifest)
    return 0


def _install(args: argparse.Namespace, uninstall: bool) -> int:
    from nexusd.units import install
    from nexusd.units.instances import InstanceError

    try:
        if uninstall:
            report = install.uninstall(Path(args.root), args.nexusd)
        else:
            instances, bases = _instances(args)
            report = install.install(Path(args.root), args.nexusd, etcd=not args.no_etcd,
                                     instances=instances, port_bases=bases)
    except InstanceError as exc:
        print(f"nexusd units: {exc}", file=sys.stderr)
        return 2
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"nexusd units: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


def _instance_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", action="append", metavar="SERVICE=LIST",
                   help="instance units nexus-SERVICE@N for N in LIST (e.g. ollama=0-3, tts=0,2): their "
                        "ports and CUDA_VISIBLE_DEVICES=N in drop-ins (repeatable)")
    p.add_argument("--port-base", action="append", metavar="SERVICE=PORT",
                   help="first port of SERVICE's instances (default: its port + 100; repeatable)")


def add_parser(subparsers) -> None:
    units = subparsers.add_parser("units", help="render or install the systemd units")
    sub = units.add_subparsers(dest="units_command", required=True)
    p = sub.add_parser("render", help="render the units of every registered service")
    p.add_argument("--out", help="directory to write (default: print to stdout)")
    p.add_argument("--nexusd", default=DEFAULT_NEXUSD, help="ExecStart= binary (default %(default)s)")
    p.add_argument("--groups", default="", help="GPU groups present on the host, e.g. video,render")
    p.add_argument("--service", action="append", help="only this service (repeatable)")
    p.add_argument("--etcd", default=DEFAULT_ETCD, help="the local etcd's binary (default %(default)s)")
    p.add_argument("--no-etcd", action="store_true", help="no local etcd unit (nexus-etcd.service)")
    _instance_options(p)
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("packaging", help="write sysusers.d, tmpfiles.d and env examples for packagers")
    p.add_argument("--out", default="packaging", help="directory (default %(default)s)")
    p.add_argument("--manifest", help="also write the services manifest the NixOS module reads")
    p.set_defaults(func=cmd_packaging)
    for name, undo, text in (("install", False, "install units, sysusers, tmpfiles and env files"),
                             ("uninstall", True, "stop, disable and remove what install wrote")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", default="/", help="install under this root (default /)")
        p.add_argument("--nexusd", default=None, help="ExecStart= binary (default: this nexusd)")
        if not undo:
            p.add_argument("--no-etcd", action="store_true",
                           help="no local etcd: the gateway finds the services of this host from their units")
            _instance_options(p)
        p.set_defaults(func=lambda a, undo=undo: _install(a, undo))
