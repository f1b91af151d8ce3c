"""`nexusd check SERVICE`: the service contract (docs/service-contract.md) as a command, and as a
function for pytest (`run_contract`). It starts the service as systemd would (or talks to a running
one with `url=`), runs every check and reports each as a row; nothing is fixed for one service.

    from nexusd.authoring.check import run_contract
    report = run_contract("demo-svc")
    assert report.ok, report.table()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from nexusd.authoring.contract import (
    CHECKS,
    SCHEMA_PATH,
    Target,
    check_still_serving,
    endpoint_checks,
)
from nexusd.authoring.launch import Launched, launch
from nexusd.authoring.lifecycle import check_drain, check_unit
from nexusd.authoring.report import FAIL, PASS, SKIP, Report, Result, run_check
from nexusd.runtime.service import Service

__all__ = ["FAIL", "PASS", "SCHEMA_PATH", "SKIP", "Report", "Result", "run_contract", "serve"]


def run_contract(service: str, *, url: str | None = None, obs_url: str | None = None,
                 env: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Report:
    """Every contract check against `service`: started here (env added to its environment), or the
    running one at `url` (`obs_url`: its observability listener when that is another port)."""
    from nexusd.services import load_service

    try:
        cls: type[Service] | None = load_service(service)
    except KeyError:
        cls = None
    if url is None and cls is None:
        return Report(service, "not found", [Result("load", FAIL, f"unknown service {service!r}: "
                                                    "not built in and no `nexusd.services` entry point")])
    launched = None
    if url is None:
        assert cls is not None
        launched = launch(cls, env)
        target = Target(service, launched.api, launched.obs, headers or {}, cls, launched)
        where = f"started `nexusd run {service}` (api {launched.api}, observability {launched.obs})"
    else:
        target = Target(service, url.rstrip("/"), (obs_url or url).rstrip("/"), headers or {}, cls)
        where = f"running at {target.api}"
    report = Report(service, where)
    try:
        if launched is not None and not _started(launched, report):
            return report
        for name, check in CHECKS:
            report.results.append(run_check(name, partial(check, target)))
        for name, fn in endpoint_checks(target):
            report.results.append(run_check(name, fn))
        report.results.append(run_check("still serving", partial(check_still_serving, target)))
        report.results.append(run_check("unit", partial(check_unit, target)))
        report.results.append(run_check("SIGTERM drain", partial(check_drain, target)))
    finally:
        if launched is not None:
            launched.close()
    return report


def _started(launched: Launched, report: Report) -> bool:
    """Wait for READY=1 (bounded by the unit's start timeout); a row saying why when it fails."""
    ready = launched.notify.wait_for("READY=1", launched.start_timeout + 30, launched.alive)
    if ready:
        return True
    why = f"exited with {launched.proc.returncode}" if not launched.alive() else "no READY=1 in time"
    report.results.append(Result("start", FAIL, f"{why}:\n{launched.log_tail()}"))
    return False


@contextmanager
def serve(service: str, env: dict[str, str] | None = None) -> Iterator[Launched]:
    """Start a service as `nexusd check` does; yield it (`.api`, `.obs`, `.notify`) once it sent
    READY=1; always stop it. For a service's own tests."""
    from nexusd.services import load_service

    launched = launch(load_service(service), env)
    try:
        if not launched.notify.wait_for("READY=1", launched.start_timeout + 30, launched.alive):
            raise RuntimeError(f"{service} sent no READY=1:\n{launched.log_tail()}")
        yield launched
    finally:
        launched.close()


def main(service: str, url: str | None, obs_url: str | None, env: dict[str, str],
         headers: dict[str, str]) -> int:
    report = run_contract(service, url=url, obs_url=obs_url, env=env, headers=headers)
    print(report.table())
    return 0 if report.ok else 1
