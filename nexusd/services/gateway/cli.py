"""`nexusd keys add|list|update|revoke`: manage the gateway's API keys file.

`add` prints the new key alone on stdout, once (so `KEY=$(nexusd keys add alice)` works); the
file keeps only its SHA-256. After a change, `systemctl reload nexus-gateway` (SIGHUP) applies it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexusd.services.gateway import usagecli
from nexusd.services.gateway.budget import parse_budget
from nexusd.services.gateway.keys import (
    KeyFileError,
    locked,
    new_key,
    parse_expiry,
    read_keys,
    write_keys,
)

DEFAULT_FILE = "/etc/nexus/api-keys"


def _path(args: argparse.Namespace) -> Path:
    return Path(args.keys_file or os.environ.get("NEXUS_GATEWAY_KEYS_FILE") or DEFAULT_FILE)


def _split(values: list[str] | None) -> frozenset[str] | None:
    if not values:
        return None
    return frozenset(v.strip() for item in values for v in item.split(",") if v.strip())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _or_none(parse: Any) -> Any:
    """For `update`: `none` lifts the limit or scope (None); anything else is parsed."""
    def parse_or_none(text: Any) -> Any:
        if (text if isinstance(text, str) else " ".join(text)).strip().lower() == "none":
            return None
        return parse(text)
    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return parse_or_none


def _budget(text: str) -> tuple[int, str]:
    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# The fields `update` may change: option dest → the ApiKey field and how its text is parsed
# (None: by the option's own type). A new limit is one entry here plus its option in add_parser.
UPDATABLE: dict[str, tuple[str, Any]] = {
    "rpm": ("rpm", None), "tpm": ("tpm", None), "max_concurrent": ("max_concurrent", None),
    "budget": ("budget", None), "ops": ("operations", _or_none(_split)),
    "models": ("models", _or_none(_split)), "expires": ("expires", _or_none(parse_expiry)),
}


def cmd_add(args: argparse.Namespace) -> int:
    path = _path(args)
    with locked(path):  # read-modify-write: a concurrent add or revoke must not be lost
        return _add(args, path)


def _add(args: argparse.Namespace, path: Path) -> int:
    keys = read_keys(path)
    if any(k.name == args.name for k in keys.values()):
        print(f"nexusd keys: a key named {args.name!r} exists; revoke it first", file=sys.stderr)
        return 1
    expires = None
    if args.expires:
        try:
            expires = parse_expiry(args.expires)
        except ValueError:
            print(f"nexusd keys: --expires: not a date or duration: {args.expires!r}", file=sys.stderr)
            return 2
    plaintext, record = new_key(args.name, operations=_split(args.ops), models=_split(args.models),
                                rpm=args.rpm, expires=expires, tpm=args.tpm, max_concurrent=args.max_concurrent,
                                budget=args.budget)
    write_keys(path, [*keys.values(), record])
    print(plaintext)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = read_keys(_path(args))
    print(f"{'NAME':<20} {'ID':<12} {'RPM':>5} {'TPM':>8} {'CONC':>4}  {'EXPIRES':<25} OPERATIONS / MODELS")
    for k in sorted(keys.values(), key=lambda k: k.name):
        expires = datetime.fromtimestamp(k.expires, UTC).isoformat() if k.expires else "-"
        ops = ",".join(sorted(k.operations)) if k.operations is not None else "*"
        models = ",".join(sorted(k.models)) if k.models is not None else "*"
        print(f"{k.name:<20} {k.id:<12} {k.rpm or '-':>5} {k.tpm or '-':>8} {k.max_concurrent or '-':>4}  "
              f"{expires:<25} {ops} / {models}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    for dest, (field, parse) in UPDATABLE.items():
        if dest not in vars(args):  # not given: kept
            continue
        try:
            changes[field] = parse(getattr(args, dest)) if parse else getattr(args, dest)
        except ValueError:
            print(f"nexusd keys: --{dest.replace('_', '-')}: not valid: {getattr(args, dest)!r}", file=sys.stderr)
            return 2
    if not changes:
        print("nexusd keys update: nothing to change (give --rpm, --tpm, --max-concurrent, --ops, --models "
              "--expires or --budget)", file=sys.stderr)
        return 2
    path = _path(args)
    with locked(path):  # read-modify-write, as add and revoke
        keys = read_keys(path)
        found = [k for k in keys.values() if k.name == args.name or k.id == args.name]
        if not found:
            print(f"nexusd keys: no key named {args.name!r}", file=sys.stderr)
            return 1
        updated = dataclasses.replace(found[0], **changes)
        write_keys(path, [updated if k.id == updated.id else k for k in keys.values()])
    print(f"updated {updated.name} ({updated.id}); reload the gateway (systemctl reload nexus-gateway)",
          file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = _path(args)
    with locked(path):
        return _revoke(args, path)


def _revoke(args: argparse.Namespace, path: Path) -> int:
    keys = read_keys(path)
    kept = [k for k in keys.values() if k.name != args.name and k.id != args.name]
    if len(kept) == len(keys):
        print(f"nexusd keys: no key named {args.name!r}", file=sys.stderr)
        return 1
    write_keys(path, kept)
    print(f"revoked {len(keys) - len(kept)} key(s); reload the gateway (systemctl reload nexus-gateway)",
          file=sys.stderr)
    return 0


def _guard(func):  # noqa: ANN001, ANN202 - argparse callback wrapper
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except KeyFileError as exc:
            print(f"nexusd keys: {exc}", file=sys.stderr)
            return 1
        except PermissionError as exc:
            print(f"nexusd keys: {exc.filename}: permission denied", file=sys.stderr)
            return 1
    return run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage the gateway's API keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keys-file", help=f"keys file (default $NEXUS_GATEWAY_KEYS_FILE or {DEFAULT_FILE})")
    p = sub.add_parser("add", parents=[common], help="create a key and print it once")
    p.add_argument("name")
    p.add_argument("--ops", nargs="+", help="allowed operation ids (default: all)")
    p.add_argument("--models", nargs="+", help="allowed model ids or aliases (default: all)")
    p.add_argument("--rpm", type=_positive, help="requests per minute (default: unlimited)")
    p.add_argument("--tpm", type=_positive, help="tokens per minute over every gateway (default: unlimited)")
    p.add_argument("--max-concurrent", type=_positive,
                   help="requests in flight at once over every gateway (default: unlimited)")
    p.add_argument("--expires", help="ISO date/time (UTC) or a duration such as 30d, 12h")
    p.add_argument("--budget", type=_budget, help="tokens per UTC day or month over every gateway: N/day or N/month")
    p.set_defaults(func=_guard(cmd_add))
    p = sub.add_parser("update", parents=[common], help="change a key's limits or scope (`none` lifts one)",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("name", help="the key's name or id")
    p.add_argument("--rpm", type=_or_none(_positive), help="requests per minute over every gateway, or none")
    p.add_argument("--tpm", type=_or_none(_positive), help="tokens per minute over every gateway, or none")
    p.add_argument("--max-concurrent", type=_or_none(_positive), help="requests in flight over every gateway, or none")
    p.add_argument("--ops", nargs="+", help="allowed operation ids, or none (all)")
    p.add_argument("--models", nargs="+", help="allowed model ids or aliases, or none (all)")
    p.add_argument("--expires", help="ISO date/time (UTC), a duration such as 30d, or none")
    p.add_argument("--budget", type=_or_none(_budget), help="tokens per UTC day or month (N/day, N/month), or none")
    p.set_defaults(func=_guard(cmd_update))
    p = sub.add_parser("list", parents=[common], help="list keys (never the secrets)")
    p.set_defaults(func=_guard(cmd_list))
    p = sub.add_parser("revoke", parents=[common], help="remove a key by name or id")
    p.add_argument("name")
    p.set_defaults(func=_guard(cmd_revoke))
    usagecli.add_parser(sub, common, _guard, _path)  # `keys usage`: the usage ledger
