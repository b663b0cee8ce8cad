"""`imagegw`: run the gateway and worker (`serve`), or each alone, check a config, or
reconcile records with image directories.

This is `main`: the only place that reads the environment (IMAGEGW_CONFIG,
IMAGEGW_HOME, IMAGEGW_LISTEN) and configures logging."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from imagegw.cache.layout import private_directory
from imagegw.cli import doctor, malloc, units
from imagegw.domain.config import Config, default_config, load_config, parse_host_port
from imagegw.domain.errors import ImageGatewayError
from imagegw.signatures import load_site_trust

log = logging.getLogger("imagegw")


def _data_dir(args: argparse.Namespace) -> str:
    if args.data_dir:
        return args.data_dir
    if os.environ.get("IMAGEGW_HOME"):
        return os.environ["IMAGEGW_HOME"]
    return str(Path.home() / ".local" / "share" / "imagegw")


def _config(args: argparse.Namespace) -> Config:
    listen = args.listen or os.environ.get("IMAGEGW_LISTEN") or None
    path = args.config or os.environ.get("IMAGEGW_CONFIG")
    data_dir = _data_dir(args)
    if path:
        config = load_config(path, data_dir=args.data_dir or None, listen=listen)
        if not config.data_dir:
            config = load_config(path, data_dir=data_dir, listen=listen)
    else:
        config = default_config(data_dir, listen=listen)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    private_directory(config.data_dir)  # records, credentials, worker secret: 0700
    if getattr(args, "rest_listen", None):
        parse_host_port(args.rest_listen, "--rest-listen")
        config = replace(config, rest_listen=args.rest_listen)
    return config


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _serve(args: argparse.Namespace) -> int:
    from imagegw.gateway.app import GatewayApp
    from imagegw.worker.app import WorkerApp

    config = _config(args)
    # The local worker listens on a Unix socket in a directory only this account can enter,
    # not on a loopback port every local user could call (it also checks the worker secret).
    run_dir = tempfile.mkdtemp(prefix="imagegw-")
    try:
        worker = WorkerApp(config, f"unix:{run_dir}/worker.sock")
        worker.start()
        gateway = GatewayApp(config, config.listen, [worker.address])
        gateway.start()
        _announce(args, gateway.address)
        _wait_for_signal()
        log.info("shutting down")
        gateway.stop()
        worker.stop(drain_timeout=5.0)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from imagegw.gateway.app import GatewayApp

    config = _config(args)
    if not config.worker_addresses and not config.broker:
        raise ImageGatewayError("`imagegw gateway` needs workers: set WorkerAddresses, or a Broker "
                                "(Redis) that `imagegw worker` processes register with",
                                hint="or run `imagegw serve` for a gateway with a local worker")
    gateway = GatewayApp(config, config.listen, list(config.worker_addresses))
    gateway.start()
    _announce(args, gateway.address)
    _wait_for_signal()
    gateway.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from imagegw.worker.app import WorkerApp

    config = _config(args)
    worker = WorkerApp(config, args.listen or os.environ.get("IMAGEGW_WORKER_LISTEN")
                       or "127.0.0.1:7778", advertise=args.advertise, worker_id=args.worker_id)
    worker.start()
    _announce(args, worker.address)
    _wait_for_signal()
    worker.stop(drain_timeout=args.drain_timeout)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    trust = load_site_trust(config)  # PolicyFormatError names the file and the key
    for warning in (*config.warnings, *trust.warnings):
        print(f"warning: {warning}")
    for system, judged in sorted(trust.systems.items()):
        print(f"signature policy of {system}: {judged.policy.path} ({judged.digest})")
    print(f"ok: {len(config.platforms)} systems ({', '.join(sorted(config.platforms))}), "
          f"{len(config.locations)} locations, records in "
          f"{'MongoDB' if config.mongodb_uri else 'SQLite'}, queue "
          f"{'Redis' if config.broker else 'in-process'}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """Records against image directories: report, and with --repair fix (docs/deployment.md)."""
    from imagegw.gateway.core.presence import check_targets
    from imagegw.gateway.core.reconcile import Reconciler
    from imagegw.gateway.store import open_store

    config = _config(args)
    store = open_store(config)
    try:
        check_targets(config, store, retarget=tuple(args.retarget))
        reconciler = Reconciler(config, store, grace=args.grace)
        clean = True
        for system in args.system or sorted(config.platforms):
            report = reconciler.survey(system)
            if args.repair:
                reconciler.repair(report)
            print(f"system {system} ({report.where}): {report.records} READY records, "
                  f"{report.files} files")
            if report.error:
                print(f"  error: {report.error}")
            for finding in report.findings:
                outcome = f"  [{finding.outcome}]" if finding.outcome else ""
                print(f"  {finding.kind:<14} {finding.name}: {finding.detail}{outcome}")
            clean = clean and (report.clean if args.repair
                               else not report.error and not report.findings)
        if not clean and not args.repair:
            print("run again with --repair to fix these (files no record knows are deleted "
                  "only then)")
        return 0 if clean else 1
    finally:
        store.close()


def _announce(args: argparse.Namespace, address: str) -> None:
    if args.address_file:
        tmp = Path(args.address_file + ".tmp")
        tmp.write_text(address + "\n")
        tmp.replace(args.address_file)
    print(f"listening on {address}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegw", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("IMAGEGW_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("serve", "gateway and a local worker on the embedded default"),
                           ("gateway", "the gateway alone (workers from WorkerAddresses)"),
                           ("worker", "a worker alone")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--config", help="Shifter imagemanager.json (or IMAGEGW_CONFIG)")
        cmd.add_argument("--listen", help="HOST:PORT to listen on (or IMAGEGW_LISTEN)")
        cmd.add_argument("--data-dir", help="data directory (or IMAGEGW_HOME)")
        cmd.add_argument("--address-file", help="write the bound address here once listening")
        if name != "worker":
            cmd.add_argument("--rest-listen", metavar="HOST:PORT",
                             help="also serve Shifter's REST API here (or RestListen)")
        if name == "worker":
            cmd.add_argument("--drain-timeout", type=float, default=300.0,
                             help="seconds to let running jobs finish on SIGTERM")
            cmd.add_argument("--advertise", help="HOST:PORT gateways use to reach this worker "
                             "(default: the listen address)")
            cmd.add_argument("--worker-id", help="name in the worker directory (default: host-pid)")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    doctor.add_arguments(sub.add_parser("doctor", help="check a configuration against this host"))
    units.add_arguments(sub.add_parser("units", help="the systemd units, ready to install"))
    reconcile = sub.add_parser("reconcile", help="compare records with every image directory; "
                               "--repair fixes what it finds")
    reconcile.add_argument("--config", help="Shifter imagemanager.json (or IMAGEGW_CONFIG)")
    reconcile.add_argument("--data-dir", help="data directory (or IMAGEGW_HOME)")
    reconcile.add_argument("--system", action="append", default=[],
                           help="only this system (repeatable; default: every system)")
    reconcile.add_argument("--repair", action="store_true",
                           help="retire records whose files are gone, delete files no record "
                           "knows and stale temporaries, rewrite mismatched meta files")
    reconcile.add_argument("--grace", type=float, default=600.0,
                           help="leave files changed in the last SECONDS alone (default 600: "
                           "a publish may be writing them)")
    reconcile.add_argument("--retarget", action="append", default=[], metavar="SYSTEM",
                           help="the records of SYSTEM now belong to this configuration's "
                           "image directory or hosts (after moving them)")
    reconcile.set_defaults(listen=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # grpc's asyncio server logs a line at DEBUG on every call ("Loaded running loop"):
    # noise that would cost each lookup a formatted log line when we run at DEBUG.
    logging.getLogger("grpc._cython.cygrpc").setLevel(max(logging.INFO,
                                                          logging.getLogger().level))
    if args.command in ("serve", "gateway", "worker"):
        malloc.limit_arenas(os.environ)  # before any thread starts (cli/malloc.py)
    handlers = {"serve": _serve, "gateway": _gateway, "worker": _worker, "check-config": _check,
                "doctor": doctor.run, "units": units.run, "reconcile": _reconcile}
    try:
        return handlers[args.command](args)
    except ImageGatewayError as exc:
        print(f"imagegw: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
