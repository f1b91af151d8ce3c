"""`nexusd keys usage [--since DATE] [--until DATE] [--key NAME] [--json]`: the usage ledger
(ledger.py), summed over every gateway, per UTC day, key and model.

It reads where the gateway writes: etcd when NEXUS_ETCD_ENDPOINTS is set (with the NEXUS_ETCD_*
TLS and user settings), else the usage directory (NEXUS_GATEWAY_USAGE_DIR). Each comes from the
environment, else from the files the gateway's unit reads (`<config-dir>/common.env`, then
`gateway.env`), so `sudo nexusd keys usage` on a gateway host needs no options. Key names come
from the keys file; a revoked key is shown by its id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from nexusd.services.gateway.usagestore import FIELDS, EtcdStore, FileStore, Record, Store, add_into

CONFIG_DIR = "/etc/nexus"
DEFAULT_USAGE_DIR = "/var/lib/nexus/gateway/usage"  # the unit's StateDirectory=nexus/gateway


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def unit_environment(config_dir: Path) -> dict[str, str]:
    """NEXUS_* from the gateway unit's env files, overridden by this process's environment."""
    env: dict[str, str] = {}
    for name in ("common.env", "gateway.env"):
        try:
            text = (config_dir / name).read_text()
        except OSError:
            continue  # absent, or not readable as this user: the environment may say it
        env |= {m.group(1): m.group(2).strip().strip("'\"")
                for m in re.finditer(r"^\s*(NEXUS_\w+)=(.*)$", text, re.M)}
    return env | {k: v for k, v in os.environ.items() if k.startswith("NEXUS_")}


def open_store(env: dict[str, str], usage_dir: str | None) -> Store:
    from nexusd.runtime.settings import SharedSettings

    fields = {name: env[f"NEXUS_{name.upper()}"] for name in SharedSettings.model_fields
              if name.startswith("etcd_") and f"NEXUS_{name.upper()}" in env}
    shared = SharedSettings(**fields)  # type: ignore[arg-type]  # pydantic parses the strings
    if shared.etcd_endpoint_list and not usage_dir:
        from nexusd.runtime.etcd import etcd_client

        return EtcdStore(lambda: etcd_client(shared))
    return FileStore(Path(usage_dir or env.get("NEXUS_GATEWAY_USAGE_DIR") or DEFAULT_USAGE_DIR))


def summarise(rows: list[tuple[str, str, str, Record]], names: dict[str, str],
              only: str | None) -> list[dict[str, Any]]:
    """One row per (day, key, model), summed over gateways, sorted."""
    sums: dict[tuple[str, str], Record] = {}
    for day, key_id, _gateway, record in rows:
        if only is None or only in (key_id, names.get(key_id)):
            add_into(sums.setdefault((day, key_id), {}), record)
    out = []
    for (day, key_id), record in sorted(sums.items()):
        for model, counts in sorted(record.items()):
            row: dict[str, Any] = {"day": day, "key": names.get(key_id, key_id), "key_id": key_id,
                                   "revoked": key_id not in names, "model": model}
            row |= dict(zip(FIELDS, counts, strict=True))
            row["total_tokens"] = counts[1] + counts[2]
            out.append(row)
    return out


def cmd_usage(args: argparse.Namespace, keys_path: Path) -> int:
    from nexusd.services.gateway.keys import read_keys

    today = datetime.now(UTC).date()
    until = args.until or today.isoformat()
    since = args.since or (today - timedelta(days=6)).isoformat()
    if since > until:
        print(f"nexusd keys usage: --since {since} is after --until {until}", file=sys.stderr)
        return 2
    store = open_store(unit_environment(Path(args.config_dir)), args.usage_dir)
    names = {k.id: k.name for k in read_keys(keys_path).values()}

    async def read() -> list[Any]:
        try:
            return await asyncio.wait_for(store.read(since, until), 15)
        finally:
            await store.close()

    try:
        rows = summarise(asyncio.run(read()), names, args.key)
    except Exception as exc:  # noqa: BLE001 - etcd away, TLS refused...: one line, not a traceback
        print(f"nexusd keys usage: cannot read the ledger from {store.describe()}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"since": since, "until": until, "store": store.describe(), "rows": rows}, indent=2))
        return 0
    print(f"{'DAY':<10}  {'KEY':<20} {'MODEL':<28} {'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>10} {'TOTAL':>10}")
    for r in rows:
        key = r["key"] + (" (revoked)" if r["revoked"] else "")
        print(f"{r['day']:<10}  {key:<20} {r['model']:<28} {r['requests']:>9} {r['prompt_tokens']:>10} "
              f"{r['completion_tokens']:>10} {r['total_tokens']:>10}")
    if not rows:
        print(f"(no usage from {since} to {until} in {store.describe()})", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, guard: Any,
               keys_path: Any) -> None:
    p = sub.add_parser("usage", parents=[common],
                       help="tokens and requests per day, key and model, over every gateway")
    p.add_argument("--since", type=_day, help="first UTC day, YYYY-MM-DD (default: 6 days ago)")
    p.add_argument("--until", type=_day, help="last UTC day, YYYY-MM-DD (default: today)")
    p.add_argument("--key", help="only this key (name or id)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--usage-dir", help="read this directory rather than etcd "
                                       "(default: $NEXUS_GATEWAY_USAGE_DIR or " + DEFAULT_USAGE_DIR + ")")
    p.add_argument("--config-dir", default=CONFIG_DIR,
                   help=f"where the gateway unit's common.env and gateway.env are (default {CONFIG_DIR})")
    p.set_defaults(func=guard(lambda args: cmd_usage(args, keys_path(args))))
