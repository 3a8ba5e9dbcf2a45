"""The `semifl` command. Thin: parse, then call the service."""
from __future__ import annotations

import argparse
import logging
import sys
import time

from semifl.config import ConfigError


def _common(p: argparse.ArgumentParser):
    p.add_argument("--broker", help="mqtt[s]://[user@]host:port of an external broker (Mosquitto; mqtts: TLS); "
                                    "default: an embedded one with this run's own accounts")
    p.add_argument("--broker-password-file", metavar="PATH", help="the password of the --broker user, read from "
                   "this file (or $SEMIFL_BROKER_PASSWORD): a password in the URL is visible to any local user in `ps`")
    p.add_argument("--broker-ca", metavar="PEM", help="mqtts: the CA that signed the broker's certificate "
                                                      "(a `semifl certs init` folder's ca.pem; default: the system's)")
    p.add_argument("--broker-cert", metavar="PEM", help="mqtts: a client certificate to present")
    p.add_argument("--broker-key", metavar="PEM", help="mqtts: its private key")
    p.add_argument("--certs", metavar="DIR", help="run/fleet with --broker: each virtual device's own account "
                                                   "from this `semifl certs` folder (issued there if missing)")
    p.add_argument("--seed", type=int, help="seed of everything random in the run (default 0)")
    _verbosity(p)


def _ui_flags(p: argparse.ArgumentParser):
    p.add_argument("--ui", metavar="[HOST:]PORT", help="serve a live page of the fleet and rounds, /api and /metrics "
                   "(Prometheus) on this port (docs/ui.md); read-only; beyond loopback it requires a token, printed at start")
    p.add_argument("--ui-linger", type=float, default=0.0, metavar="S", help="with --ui: keep the page up S seconds after "
                   "the run is over (default 0)")


def _live_ui(args, cfg):
    """--ui: the page over the session of this run (semifl.ui); a no-op without it."""
    from semifl.app.run import device_role
    from semifl.ui.hosting import LiveUI

    try:
        return LiveUI(args.ui, role_of=lambda cls: device_role(cfg, cls), linger_s=args.ui_linger)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _verbosity(p: argparse.ArgumentParser):
    p.add_argument("-v", "--verbose", action="store_true", help="log what the host and the rounds do (INFO)")
    p.add_argument("--debug", action="store_true", help="log everything (DEBUG) and show the traceback of an error")


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _run_flags(p: argparse.ArgumentParser):
    from semifl.config import add_flags

    add_flags(p, skip={"broker", "seed"})
    p.add_argument("--devices", type=_positive, metavar="N",
                   help="total virtual devices, split 60/40 into FL (Pi) and CL (MCU) like the seed (default 10)")
    _common(p)


def _load_config(args):
    from semifl.config import RunConfig, flag_overrides

    over = flag_overrides(args)
    if getattr(args, "devices", None) is not None:
        over["fl_devices"] = over.get("fl_devices", round(args.devices * 0.6))
        over.setdefault("cl_devices", max(0, args.devices - over["fl_devices"]))
    cfg = RunConfig.load(args.config, over)
    if cfg.init:   # a file that does not fit is refused before a run folder or a broker exists
        from semifl.learn import initial

        initial.load(cfg.init)
    return cfg


class _Display:
    """The live line of a run: rounds done, the last accuracy, and what the open round is doing now."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.prog = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                             TextColumn("{task.description}"), transient=True)
        self.task = self.prog.add_task("starting the fleet", total=total)
        self.acc = "-"
        self.last = 0

    def start(self, completed: int):
        self.prog.update(self.task, completed=completed)
        return self.prog

    def on_round(self, m):
        if m["accuracy"] is not None:
            self.acc = f"{100 * m['accuracy']:.2f}%"
        loss = "" if m.get("loss") is None else f"  loss {m['loss']:.3f}"
        self.last = m["round"]
        self.prog.update(self.task, completed=m["round"], description=f"acc {self.acc}{loss}")

    def on_progress(self, rnd, text):
        self.prog.update(self.task, description=f"acc {self.acc} | round {rnd}: {text}")


def _rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")


def _took_part(rounds: list) -> bool:
    """Whether any device's work (an update, samples) was merged in any round."""
    return any(m["participants"]["fl"] or m["participants"]["cl"] for m in rounds)


def _ended(command: str, summary: dict, out, logs: str) -> int:
    """The last line of `run` and `serve`: the result, or that nobody took part (exit 1; see `logs`)."""
    if not _took_part(summary["rounds"]):
        print(f"semifl {command}: no device took part in any round (no update or samples were merged); see {logs}",
              file=sys.stderr)
        return 1
    acc = "-" if summary["final_accuracy"] is None else f"{100 * summary['final_accuracy']:.2f}%"
    print(f"final accuracy {acc} after {_rounds(len(summary['rounds']))}; rejected: {summary['rejected'] or 'none'}; "
          f"refused: {summary['refused'] or 'none'}; wrote {out}/summary.json and {out}/rounds.png")
    return 0


def cmd_run(args):
    from semifl.app.run import resume_config, run_experiment

    if args.resume:
        given = {k for k, v in vars(args).items() if v not in (None, False) and k not in
                 ("resume", "rounds", "fn", "cmd", "argv", "verbose", "debug", "ui", "ui_linger")}
        if given:
            raise ConfigError(f"--resume takes the run's own config.json; only --rounds may change "
                              f"(also given: {', '.join('--' + g.replace('_', '-') for g in sorted(given))})")
        cfg, done = resume_config(args.resume, args.rounds)
    else:
        cfg, done = _load_config(args), 0
    _link_secrets(args)
    for note in cfg.notes():
        print(f"semifl run: note: {note}", file=sys.stderr)
    show = _Display(cfg.rounds)
    where = {}

    def started(out):
        where["out"] = out
        print(f"{'resuming' if args.resume else 'writing'} {out}/ (strategy {cfg.strategy}, {_rounds(cfg.rounds)}"
              f"{f', from round {done + 1}' if args.resume else ''})", flush=True)
    view = _live_ui(args, cfg)
    try:
        with view, show.start(done):
            summary = run_experiment(cfg, on_round=show.on_round, overwrite=args.overwrite, resume=bool(args.resume),
                                     on_start=started, on_progress=show.on_progress, certs=args.certs,
                                     on_session=view.hook, workers=args.host_workers)
    except KeyboardInterrupt:
        if "out" in where:
            print(f"\nstopped after {_rounds(show.last)}; go on with: semifl run --resume {where['out']}", file=sys.stderr)
        else:
            print("\nstopped before the run began", file=sys.stderr)
        return 130
    rc = _ended("run", summary, where["out"], f"{where['out']}/fleet/_workers/*.log and fleet/*/device.log")
    view.linger()
    return rc


def cmd_broker(args):
    from semifl.transport.broker import EmbeddedBroker
    from semifl.transport.certs import CertsError
    from semifl.transport.mqtt import is_loopback_host

    if args.certs:
        try:
            b = EmbeddedBroker.secured(args.certs, args.host, args.port or 8883,
                                       require_certificate=args.require_certificate)
        except CertsError as e:
            raise ConfigError(str(e)) from None
    elif not is_loopback_host(args.host) and not args.insecure:
        print(f"semifl broker: refusing to listen on {args.host} anonymous and in clear: anyone who reaches it "
              f"could read every upload and model and publish as any device. Give --certs DIR (`semifl certs "
              f"init --dir DIR --host NAME`), or --insecure if the network is trusted", file=sys.stderr)
        return 2
    else:
        b = EmbeddedBroker(args.host, args.port or 1883)
    b.start()
    how = "anonymous" if not args.certs else "accounts from " + args.certs + (", client certificates required"
                                                                           if args.require_certificate else "")
    print(f"embedded MQTT broker on {b.url} ({how}; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        b.stop()
    return 0


def _link_secrets(args) -> None:
    """--broker-password-file / --broker-ca / --broker-cert as the environment the link reads
    (transport/mqtt.py), so no secret ever stands in argv, which `ps` shows every local user."""
    import os

    if getattr(args, "broker_password_file", None):
        with open(args.broker_password_file) as f:
            os.environ["SEMIFL_BROKER_PASSWORD"] = f.read().strip()
    for flag, var in (("broker_ca", "SEMIFL_BROKER_CA"), ("broker_cert", "SEMIFL_BROKER_CERT"),
                      ("broker_key", "SEMIFL_BROKER_KEY")):
        if getattr(args, flag, None):
            os.environ[var] = getattr(args, flag)


def _external(args, command: str):
    """The config of a command that joins a broker someone else runs; beyond loopback it must be
    mqtts:// unless --insecure."""
    from semifl.transport.mqtt import is_loopback, is_tls

    cfg = _load_config(args)
    if not cfg.broker:
        raise ConfigError(f"semifl {command}: --broker mqtt://host:port is required (start one with `semifl broker`)")
    if not is_loopback(cfg.broker) and not is_tls(cfg.broker) and not cfg.trust.insecure:
        raise ConfigError(f"refusing to use {cfg.broker.split('@')[-1]} in clear beyond loopback: passwords, "
                          f"uploads and models would cross the network readable by anyone on it. Use mqtts:// "
                          f"(the broker's TLS listener, with --broker-ca), or --insecure if the network is trusted")
    _link_secrets(args)
    return cfg


def cmd_certs(args):
    from pathlib import Path

    from semifl.transport import certs

    try:
        if args.action == "init":
            c = certs.init(args.dir, args.host, overwrite=args.overwrite)
            print(f"CA {c.ca}; broker certificate {c.server} (key {c.server_key}); accounts {c.passwd}; host "
                  f"password in {c.dir / 'host.password'}")
            print(f"start a broker: semifl broker --host 0.0.0.0 --certs {c.dir}   (or Mosquitto: tools/mosquitto/semifl.conf)")
            return 0
        if args.role != "device":
            from semifl.app.edge import role_acl

            cred = certs.issue_role(args.dir, args.device, args.role, overwrite=args.overwrite)
            print(f"{cred.user}: password in {Path(args.dir) / (args.role + 's') / (args.device + '.password')} (added "
                  f"to the passwd). Add to the core's ACL (/etc/mosquitto/semifl.acl) and reload Mosquitto:\n\n"
                  f"{role_acl(args.role, args.device)}")
            return 0
        cred = certs.issue(args.dir, args.device, overwrite=args.overwrite)
    except certs.CertsError as e:
        print(f"semifl certs: {e}", file=sys.stderr)
        return 2
    c = certs.Certs(Path(args.dir))
    print(f"{cred.user}: password in {c.dir / 'devices' / (cred.user + '.password')}, certificate {cred.cert}, "
          f"key {cred.key}; CA {c.ca} (PEM, the Pi agent's \"ca\") and {c.ca_der} (DER, the MicroPython node's)")
    print(f"broker URL: mqtts://{cred.user}:{cred.password}@{args.broker_host}:8883")
    return 0


def cmd_serve(args):
    """The host service alone: resumes from its state database at the last completed round."""
    from semifl.app.run import serve

    cfg = _external(args, "serve")
    show = _Display(cfg.rounds)
    where = {}

    def started(out):
        where["out"] = out
        print(f"serving {cfg.strategy} on {cfg.broker}; results in {out}/ (a restart resumes from its state)",
              flush=True)
    view = _live_ui(args, cfg)
    try:
        with view, show.start(0):
            summary = serve(cfg, args.wait_devices, args.wait_s, on_round=show.on_round,
                            on_progress=show.on_progress, on_start=started, state=args.state, on_session=view.hook,
                            workers=args.host_workers, spawn=not args.workers_elsewhere, edges=args.edges)
    except KeyboardInterrupt:
        print(f"\nstopped after {_rounds(show.last)}; the same `semifl serve` command goes on from there", file=sys.stderr)
        return 130
    rc = _ended("serve", summary, where["out"], "the devices' logs")
    view.linger()
    return rc


def cmd_worker(args):
    """A host worker (service/aggregator.py) on --broker until Ctrl-C: folds its share of the FL uploads."""
    from semifl.app.aggregate import run_aggregator

    _link_secrets(args)
    print(f"host worker {args.id} on {args.broker}; its spool in {args.dir} (Ctrl-C stops it)", flush=True)
    return run_aggregator(args.broker, args.id, args.dir)


def cmd_edge(args):
    """An edge: its Mosquitto bridged to --core, and its aggregator, until Ctrl-C."""
    import signal
    import time

    from semifl.app.edge import Edge

    folder = args.dir or f"edge-{args.id}"
    edge = Edge(args.id, args.core, args.listen, folder, bind=args.bind, certs=args.certs)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with edge:
        print(f"edge {args.id}: devices connect to {args.bind}:{args.listen}; bridged to {args.core}; config and logs "
              f"in {folder}/ (Ctrl-C stops it)", flush=True)
        try:
            while not stop and edge.broker.poll() is None and edge.aggregator.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 130
        if not stop:
            print(f"semifl edge: {'the broker' if edge.broker.poll() is not None else 'the aggregator'} ended; see "
                  f"{folder}/*.log", file=sys.stderr)
            return 1
    return 0


def _host_workers(p: argparse.ArgumentParser, elsewhere: bool = False):
    p.add_argument("--host-workers", type=int, default=0, metavar="N",
                   help="N host worker processes fold the FL uploads, sharing them through MQTT v5 shared "
                        "subscriptions (needs --broker of a Mosquitto 2; docs/scale.md)")
    if elsewhere:
        p.add_argument("--workers-elsewhere", action="store_true",
                       help="with --host-workers N: start none here, wait for N `semifl worker`s")
        p.add_argument("--edges", type=int, default=0, metavar="N",
                       help="N edge aggregators (`semifl edge`) fold their devices' updates; waited for before round 1")


def cmd_fleet(args):
    from pathlib import Path

    from semifl.app.run import start_fleet

    cfg = _external(args, "fleet")
    fleet = start_fleet(cfg, Path(args.root), certs=args.certs)
    print(f"{len(fleet.specs)} virtual devices running against {cfg.broker}; logs in {args.root}/_workers/ (devices sharing a process) and {args.root}/<id>/device.log (one of their own) "
          f"(Ctrl-C stops them)", flush=True)
    try:
        fleet.stop(timeout=10 ** 9)   # devices exit when the host ends the run
    except KeyboardInterrupt:
        fleet.stop(timeout=0)
        return 130
    return 0


def _fractions(upper_open: bool):
    """An argparse type: comma-separated numbers in [0, 1] ([0, 1) with upper_open)."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        bad = [v for v in vals if not (0 <= v < 1 if upper_open else 0 <= v <= 1)]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"each value must be in [0, {'1)' if upper_open else '1]'}, got {text!r}")
        return vals
    return parse


def _command(args) -> str:
    """The command line that wrote an experiment's results, kept in its JSON."""
    import shlex

    return "semifl " + shlex.join(args.argv)


def _init_flag(p: argparse.ArgumentParser):
    p.add_argument("--init", metavar="PATH", help="initial global model: the SemiFL seed's code/get_initial_model.mat "
                   "(MATLAB v7.3) or an .npz (default: Glorot-uniform from --seed)")


def _own_folder(out, marker: str, command: str) -> None:
    """`out` may be new, empty, or hold this command's own earlier results (its `marker` file)."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise ConfigError(f"--out {out} is not empty and holds no {marker} of an earlier `semifl {command}`; "
                          f"give a new folder")


def cmd_reproduce(args):
    from pathlib import Path

    from rich.progress import Progress

    from semifl.experiments.reproduce import reproduce
    from semifl.learn.data import load_idx_dataset

    _own_folder(args.out, "results.json", "reproduce")
    ds = load_idx_dataset(args.data)
    names = args.baselines.split(",") if args.baselines else None
    with Progress() as prog:
        tasks = {}

        def on_round(name, m):
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=args.rounds)
            prog.update(tasks[name], completed=m["round"], description=f"{name} {100 * m['accuracy']:.2f}%")
        reproduce(ds, args.rounds, Path(args.out), names, args.seed or 0, on_round, lr=args.lr, init=args.init,
                  seed_curves=args.seed_curves, command=_command(args))
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/results.json, accuracy.png, table.md")
    return 0


def cmd_sweep(args):
    from pathlib import Path

    from semifl.experiments.sweep import sweep
    from semifl.learn.data import load_idx_dataset

    _own_folder(args.out, "sweep.json", "sweep")
    from rich.progress import Progress

    ds = load_idx_dataset(args.data)
    with Progress() as prog:
        tasks = {}

        def on_round(cell, m):
            if cell not in tasks:
                tasks[cell] = prog.add_task(f"S={cell[0]} P={cell[1]}", total=args.rounds)
            prog.update(tasks[cell], completed=m["round"], description=f"S={cell[0]} P={cell[1]} {100 * m['accuracy']:.2f}%")
        sweep(ds, args.rounds, Path(args.out), args.s, args.p, args.seed or 0, on_round=on_round, init=args.init,
              command=_command(args),
              on_cell=lambda s, p, acc, up: prog.console.print(f"S={s} P={p}: accuracy {100 * acc:.2f}%, "
                                                               f"uplink {up / 1e9:.2f} GB"))
    print(f"wrote {args.out}/sweep.json and sweep.png")
    return 0


def _broker_url(text: str) -> str:
    """An argparse type: mqtt://[user:password@]host[:port], as the board reaches the host's broker."""
    from semifl.transport.mqtt import parse_broker_url

    try:
        parse_broker_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def cmd_flash(args):
    import os
    from pathlib import Path

    from semifl.flash.build import BuildError
    from semifl.flash.flash import FlashError, FlashJob, flash

    job = FlashJob(port=args.port, board=args.board, device_id=args.device_id,
                   build=Path(args.build or f"build/flash-{args.device_id}"), broker=args.broker_url,
                   wifi_ssid=args.wifi_ssid, wifi_password=os.environ.get("SEMIFL_WIFI_PASSWORD", ""),
                   firmware=Path(args.firmware) if args.firmware else None,
                   samples=Path(args.samples) if args.samples else None,
                   labels=Path(args.labels) if args.labels else None, phases=args.phases)
    try:
        return flash(job, dry_run=args.dry_run)
    except (FlashError, BuildError) as e:
        print(f"semifl flash: {e}", file=sys.stderr)
        return 2


def cmd_ui(args):
    """Finished runs' folders, read-only, in the page (two or more: compared)."""
    import json
    from pathlib import Path

    from semifl.app.run import device_role
    from semifl.config import RunConfig
    from semifl.ui.folder import NotARunFolder, RunFolder
    from semifl.ui.server import UIServer, parse_bind

    sources = []
    try:
        host, port = parse_bind(args.bind)
        for run in args.runs:
            cfg_path = Path(run) / "config.json"   # the role rule of a run that ended before its summary
            cfg = RunConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.is_file() else None
            sources.append(RunFolder(run, role_of=(lambda c, cfg=cfg: device_role(cfg, c)) if cfg else None))
    except (NotARunFolder, ValueError) as e:
        print(f"semifl ui: {e}", file=sys.stderr)
        return 2
    server = UIServer(sources, host, port)
    server.start()
    print(server.banner() + "; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


def cmd_status(args):
    """The fleet as a live table in the terminal, from a --ui's API or from the broker."""
    from semifl.ui import status

    if bool(args.ui) == bool(args.broker):
        print("semifl status: give --ui URL (a `semifl run/serve --ui`) or --broker URL", file=sys.stderr)
        return 2
    if args.ui:
        src = status.FromUI(args.ui, sort=args.sort, limit=args.limit, query=args.filter)
    else:
        _link_secrets(args)
        src = status.FromBroker(args.broker, limit=args.limit).start()
        time.sleep(args.listen_s)   # retained caps and presence arrive at once; statuses as devices speak
    try:
        return status.watch(src, args.interval, once=args.once)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"semifl status: {e}", file=sys.stderr)
        return 1


def cmd_report(args):
    from pathlib import Path

    from semifl.service.report import NotARun, energy_table, format_table, plot_energy_vs_accuracy

    try:
        rows = energy_table([Path(r) for r in args.runs])
    except NotARun as e:
        print(f"semifl report: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if Path(args.out).exists() and not args.overwrite:
        print(f"semifl report: {args.out} exists; give --overwrite to replace it, or another --out", file=sys.stderr)
        return 2
    print(f"wrote {plot_energy_vs_accuracy(rows, Path(args.out))}")
    return 0


def cmd_models(args):
    from pathlib import Path

    from semifl.models import MODELS

    if args.action == "list":
        for m in MODELS.values():
            print(m.describe())
        return 0
    import contextlib

    from semifl.models.export import NEEDS, export, missing_modules, native_output_captured, quiet_tensorflow

    if args.name not in MODELS:
        print(f"semifl models export: unknown model {args.name!r}; known: {', '.join(sorted(MODELS))}", file=sys.stderr)
        return 2
    missing = missing_modules()   # before training: a minute of work for nothing otherwise
    if missing:
        extras = ",".join(sorted({NEEDS[m] for m in missing}))
        print(f"semifl models export needs {', '.join(missing)}, not installed: pip install -e .[{extras}]",
              file=sys.stderr)
        return 2
    if not args.out:
        print("semifl models export: give --out DIR, a new or empty folder for the .tflite, .h, card and golden "
              "outputs", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"semifl models export: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        print(f"semifl models export: --out {out} is not empty; give --overwrite to replace its files, or a new "
              "folder", file=sys.stderr)
        return 2
    print(f"exporting {args.name} to {out}" + ("" if args.params else " (trains the float model first, about a minute)"),
          flush=True)
    quiet_tensorflow()
    with contextlib.nullcontext() if args.verbose else native_output_captured():
        card = export(args.name, out, args.params, args.data)
    files = [f"{args.name}{ext}" for ext in (".tflite", ".h", ".json", ".md", ".golden.npz")
             + (() if args.params else (".fp32.npz",))]
    print(f"int8 accuracy {100 * card['int8_accuracy']:.2f} % (float {100 * card['fp32_accuracy']:.2f} %), "
          f"{card['size_bytes']} bytes, arena {card['arena_bytes']} bytes")
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="semifl", description="Semi-federated learning on IoT fleets over MQTT")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="broker + host + virtual fleet: one SemiFL experiment end to end")
    _run_flags(p)
    p.add_argument("--overwrite", action="store_true", help="--out may hold a previous run: its outputs are "
                                                            "replaced (other files are kept)")
    p.add_argument("--resume", metavar="DIR", help="go on with the interrupted run in DIR from its last completed "
                                                   "round (its own config; --rounds may extend it)")
    _host_workers(p)
    _ui_flags(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("broker", help="start the embedded MQTT broker")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1); beyond "
                   "loopback it needs --certs (or --insecure)")
    p.add_argument("--port", type=_positive, default=None, help="port (default 8883 with --certs, else 1883)")
    p.add_argument("--certs", metavar="DIR", help="a `semifl certs init` folder: TLS listener, accounts from its "
                                                   "passwd, each device confined to its own topics")
    p.add_argument("--require-certificate", action="store_true", help="with --certs: clients must present a "
                                                                      "certificate of the CA (CN = their id)")
    p.add_argument("--insecure", action="store_true", help="allow an anonymous broker in clear beyond loopback")
    _verbosity(p)
    p.set_defaults(fn=cmd_broker)
    p = sub.add_parser("certs", help="the fleet's own CA, the broker's certificate, each device's credentials")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("init", help="create a CA, the server certificate and the host's account in --dir")
    c.add_argument("--dir", default="certs", help="the certs folder (default ./certs)")
    c.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a hostname or IP the broker is reached at (repeatable; localhost and 127.0.0.1 always)")
    c.add_argument("--overwrite", action="store_true", help="make a new CA even if one exists (re-issue every device)")
    c.set_defaults(fn=cmd_certs)
    c = csub.add_parser("issue", help="a device's password and client certificate (CN = its id)")
    c.add_argument("device", help="the device id (its MQTT username and client id)")
    c.add_argument("--dir", default="certs", help="the certs folder (default ./certs)")
    c.add_argument("--broker-host", default="BROKER_HOST", help="the broker's address in the printed URL")
    c.add_argument("--overwrite", action="store_true", help="new credentials even if the device has some")
    c.add_argument("--role", choices=("device", "edge", "worker"), default="device",
                   help="an account of the host's: an edge's bridge at the core (semifl-edge-<name>) or a host "
                        "worker (semifl-worker-<name>); prints its ACL block")
    c.set_defaults(fn=cmd_certs)
    p = sub.add_parser("serve", help="the host service (its session and round object) against --broker")
    _run_flags(p)
    p.add_argument("--wait-devices", type=_positive, metavar="N",
                   help="devices to wait for before round 1 (default: the fleet the settings describe, "
                        "e.g. 10 for the defaults)")
    p.add_argument("--wait-s", type=float, default=300, help="how long to wait for them, seconds (default 300)")
    p.add_argument("--state", metavar="PATH", help="the SQLite state a restart resumes from (default: state.db "
                                                   "in the output folder, runs/serve-<name>)")
    _host_workers(p, elsewhere=True)
    _ui_flags(p)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("worker", help="a host worker: folds a share of the FL uploads for a `semifl serve "
                                      "--host-workers N --workers-elsewhere` (Mosquitto 2)")
    p.add_argument("--broker", required=True, type=_broker_url, help="mqtt[s]://[user@]host:port of the Mosquitto")
    p.add_argument("--broker-password-file", metavar="PATH", help="the password of the --broker user")
    p.add_argument("--id", required=True, type=_nonempty, help="this worker's name (unique among the workers)")
    p.add_argument("--dir", required=True, help="its folder (the spool of the updates it takes)")
    _verbosity(p)
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("edge", help="an edge aggregator: a local Mosquitto bridged to --core, folding the updates "
                                    "of the devices that connect to it (seed 003's edge tier)")
    p.add_argument("--core", required=True, type=_broker_url, help="mqtt[s]://host:port of the core broker")
    p.add_argument("--listen", required=True, type=_positive, metavar="PORT", help="the port devices connect to")
    p.add_argument("--bind", default="127.0.0.1", help="the address to listen on (beyond loopback: needs --certs)")
    p.add_argument("--id", required=True, type=_nonempty, help="this edge's name (its core account: semifl-edge-<id>)")
    p.add_argument("--certs", metavar="DIR", help="the fleet's `semifl certs` folder: devices' accounts, and this "
                                                 "edge's (semifl certs issue <id> --role edge)")
    p.add_argument("--dir", help="its folder: the broker's config, logs, the aggregator's spool (default edge-<id>)")
    _verbosity(p)
    p.set_defaults(fn=cmd_edge)
    p = sub.add_parser("ui", help="finished runs' folders, read-only, in the web page (two or more: compared)")
    p.add_argument("runs", nargs="+", help="run folders, e.g. runs/semifl-20250101-120000 runs/fedavg-...")
    p.add_argument("--bind", default="127.0.0.1:8080", metavar="[HOST:]PORT",
                   help="where to serve it (default 127.0.0.1:8080; beyond loopback it requires a token)")
    p.set_defaults(fn=cmd_ui)
    p = sub.add_parser("status", help="the fleet as a live table in the terminal (from --ui URL or --broker URL)")
    p.add_argument("--ui", metavar="URL", help="a `semifl run/serve --ui`'s address (with ?token=... if it printed one)")
    p.add_argument("--broker", help="listen on the broker instead (read-only; an account that may read semifl/v1/#)")
    p.add_argument("--broker-password-file", metavar="PATH", help="the password of the --broker user")
    p.add_argument("--broker-ca", metavar="PEM", help="mqtts: the CA that signed the broker's certificate")
    p.add_argument("--broker-cert", metavar="PEM", help="mqtts: a client certificate to present")
    p.add_argument("--broker-key", metavar="PEM", help="mqtts: its private key")
    p.add_argument("--sort", default="id", help="--ui: the column to sort by (e.g. last_seen, battery; default id)")
    p.add_argument("--filter", default="", help="--ui: the page's filter words (e.g. offline, role:cl)")
    p.add_argument("--limit", type=_positive, default=40, help="rows shown (default 40)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    p.add_argument("--listen-s", type=float, default=2.0, help="--broker: seconds to listen before the first table")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("fleet", help="start virtual devices (real device code) against --broker")
    _run_flags(p)
    p.add_argument("--root", default="fleet", help="where each device's flash (data, config) and log go "
                                                   "(default ./fleet)")
    p.set_defaults(fn=cmd_fleet)
    p = sub.add_parser("reproduce", help="reproduce a seed paper's experiment in-process (semifl: CL, FL, SemiFL)")
    p.add_argument("paper", choices=["semifl"], help="the seed paper whose experiment to reproduce")
    p.add_argument("--rounds", type=_positive, default=1000, metavar="N",
                   help="rounds per baseline, >= 1 (default 1000, the round the seed's published accuracies are at)")
    p.add_argument("--out", default="runs/reproduce-semifl", help="output folder: new, empty, or an earlier "
                   "reproduction's, whose baselines it adds to (default runs/reproduce-semifl)")
    p.add_argument("--baselines", help="comma-separated subset, e.g. cl,semifl (default: all)")
    p.add_argument("--data", help="folder of IDX files (default: Debian's Fashion-MNIST)")
    p.add_argument("--seed", type=int, help="seed of data, initialization and sampling (default 0)")
    p.add_argument("--lr", type=float, help="step size on our per-sample mean loss (default: the seed's 0.1 on "
                                            "MATLAB's sample-and-class mean, i.e. 0.01)")
    _init_flag(p)
    p.add_argument("--seed-curves", metavar="JSON", help="the seed's published curves ({name: {accuracy: [...]}}), "
                   "drawn beside ours and set against ours in table.md")
    p.set_defaults(fn=cmd_reproduce)
    p = sub.add_parser("report", help="energy vs accuracy of finished runs (their summary.json)")
    p.add_argument("runs", nargs="+", help="run folders, e.g. runs/semifl runs/fedavg")
    p.add_argument("--out", default="energy_vs_accuracy.png", help="the plot (default energy_vs_accuracy.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("models", help="model definitions; `export NAME`: int8 .tflite, C array, card (needs [export])")
    p.add_argument("action", choices=["list", "export"], help="list the model definitions, or export one")
    p.add_argument("name", nargs="?", default="mlp-fmnist", help="the model to export (default mlp-fmnist)")
    p.add_argument("--out", help="export: output folder, new or empty (required; nothing is written elsewhere)")
    p.add_argument("--overwrite", action="store_true", help="export into a non-empty --out, replacing its files")
    p.add_argument("--params", help=".npz of float parameters (arr_0..) instead of training, e.g. a run's final_model.npz")
    p.add_argument("--data", help="IDX folder (default Debian's Fashion-MNIST)")
    p.add_argument("-v", "--verbose", action="store_true", help="export: show TensorFlow's and LiteRT's own logs")
    p.set_defaults(fn=cmd_models)
    p = sub.add_parser("flash", help="build the MCU node (.mpy), copy it and a config.json to a board, verify")
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--board", default="esp32", choices=["esp32", "esp32s3", "rp2040w"], help="the board (default esp32)")
    p.add_argument("--device-id", required=True, help="the device's id on the broker, e.g. mcu-01")
    p.add_argument("--broker-url", required=True, type=_broker_url, metavar="mqtt://HOST:PORT",
                   help="the host's broker as the board reaches it, e.g. mqtt://192.168.1.10:1883")
    p.add_argument("--wifi-ssid", required=True, type=_nonempty, metavar="SSID",
                   help="Wi-Fi network the board joins (password from $SEMIFL_WIFI_PASSWORD, never argv)")
    p.add_argument("--firmware", help="MicroPython image to write first with esptool (erases the flash)")
    p.add_argument("--samples", help="the sensor's samples file to store (n x 784 uint8)")
    p.add_argument("--labels", help="its labels file (n uint8)")
    p.add_argument("--build", help="build folder (default build/flash-<device id>)")
    p.add_argument("--phases", action="store_true", help="the node marks its phases on its status topic (HIL bench)")
    p.add_argument("--dry-run", action="store_true", help="print the esptool/mpremote commands, one per line")
    p.set_defaults(fn=cmd_flash)
    p = sub.add_parser("sweep", help="SemiFL over sample selection S x pruning P, with heatmaps")
    p.add_argument("--rounds", type=_positive, default=1000, metavar="N", help="rounds per cell, >= 1 (default 1000)")
    p.add_argument("--out", default="runs/sweep-semifl", help="output folder: new, empty or an earlier sweep's "
                                                              "(default runs/sweep-semifl)")
    p.add_argument("--s", default="0,0.05,0.1,0.3,0.5,1", type=_fractions(False),
                   help="S values in [0, 1], comma-separated (default 0,0.05,0.1,0.3,0.5,1)")
    p.add_argument("--p", default="0,0.3,0.6,0.8", type=_fractions(True),
                   help="P values in [0, 1), comma-separated (default 0,0.3,0.6,0.8)")
    p.add_argument("--data", help="folder of IDX files (default: Debian's Fashion-MNIST)")
    p.add_argument("--seed", type=int, help="seed of data, initialization and sampling (default 0)")
    _init_flag(p)
    p.set_defaults(fn=cmd_sweep)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    debug = getattr(args, "debug", False)
    level = logging.DEBUG if debug else logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("amqtt", "transitions", "matplotlib", "PIL"):   # third parties' INFO is not ours to show
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # dp-accounting warns (through absl) for every RDP order it cannot evaluate and leaves out: not a fault
    logging.getLogger("absl").setLevel(max(level, logging.ERROR))
    from semifl.learn.data import DataNotFound
    from semifl.learn.initial import InitError
    from semifl.transport.mqtt import BrokerError

    try:
        return args.fn(args)
    except KeyboardInterrupt:   # before a command had its own say
        print("\nstopped", file=sys.stderr)
        return 130
    except (DataNotFound, ConfigError, BrokerError, InitError) as e:
        if debug:
            raise
        print(f"semifl {args.cmd}: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:
        if debug:
            raise
        print(f"semifl {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
