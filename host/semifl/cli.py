"""The `semifl` command. Thin: parse, then call the service."""
from __future__ import annotations

import argparse
import logging
import sys
import time


def _common(p: argparse.ArgumentParser):
    p.add_argument("--broker", help="mqtt://[user:password@]host:port of an external broker (Mosquitto); default: embedded")
    p.add_argument("--seed", type=int, help="seed of everything random in the run (default 0)")
    p.add_argument("-v", "--verbose", action="store_true")


def _run_flags(p: argparse.ArgumentParser):
    from semifl.config import add_flags

    add_flags(p, skip={"broker", "seed"})
    p.add_argument("--devices", type=int, help="total virtual devices, split 60/40 into FL (Pi) and CL (MCU) like the seed")
    _common(p)


def _load_config(args):
    from semifl.config import RunConfig, flag_overrides

    over = flag_overrides(args)
    if getattr(args, "devices", None):
        over["fl_devices"] = over.get("fl_devices") or round(args.devices * 0.6)
        over.setdefault("cl_devices", args.devices - over["fl_devices"])
    return RunConfig.load(args.config, over)


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                    TimeElapsedColumn())
    task = prog.add_task("", total=total)

    def on_round(m):
        acc = "-" if m["accuracy"] is None else f"{100 * m['accuracy']:.2f}%"
        loss = "" if m.get("loss") is None else f"  loss {m['loss']:.3f}"
        prog.update(task, completed=m["round"], description=f"acc {acc}{loss}")
    return prog, on_round


def cmd_run(args):
    from semifl.app.run import run_experiment

    cfg = _load_config(args)
    prog, on_round = _progress(cfg.rounds)
    with prog:
        summary = run_experiment(cfg, on_round=on_round)
    out = cfg.out or f"runs/{cfg.name}"
    print(f"final accuracy {100 * summary['final_accuracy']:.2f}% after {cfg.rounds} rounds; "
          f"rejected: {summary['rejected'] or 'none'}; refused: {summary['refused'] or 'none'}; wrote {out}/summary.json and {out}/rounds.png")
    return 0


def cmd_broker(args):
    from semifl.transport.broker import EmbeddedBroker

    b = EmbeddedBroker(args.host, args.port).start()
    print(f"embedded MQTT broker on {b.url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        b.stop()
    return 0


def _external(args, command: str):
    """The config of a command that joins a broker someone else runs."""
    cfg = _load_config(args)
    if not cfg.broker:
        raise SystemExit(f"semifl {command}: --broker mqtt://host:port is required (start one with `semifl broker`)")
    return cfg


def cmd_serve(args):
    """The host service alone: resumes from its state database at the last completed round."""
    from semifl.app.run import serve

    cfg = _external(args, "serve")
    return serve(cfg, args.state, args.wait_devices, args.wait_s, on_round=lambda m: print(
        f"round {m['round']}: acc {m['accuracy']} fl {m['participants']['fl']} cl {m['participants']['cl']}", flush=True))


def cmd_fleet(args):
    from pathlib import Path

    from semifl.app.run import start_fleet

    cfg = _external(args, "fleet")
    fleet = start_fleet(cfg, Path(args.root))
    print(f"{len(fleet.specs)} virtual devices running against {cfg.broker}; logs in {args.root}/<id>/device.log", flush=True)
    try:
        fleet.stop(timeout=10 ** 9)   # devices exit when the host ends the run
    except KeyboardInterrupt:
        fleet.stop(timeout=0)
    return 0


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def cmd_reproduce(args):
    from pathlib import Path

    from rich.progress import Progress

    from semifl.experiments.reproduce import reproduce
    from semifl.learn.data import load_idx_dataset

    ds = load_idx_dataset(args.data)
    names = args.baselines.split(",") if args.baselines else None
    with Progress() as prog:
        tasks = {}

        def on_round(name, m):
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=args.rounds)
            prog.update(tasks[name], completed=m["round"], description=f"{name} {100 * m['accuracy']:.2f}%")
        reproduce(ds, args.rounds, Path(args.out), names, args.seed or 0, on_round, lr=args.lr)
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/results.json, accuracy.png, table.md")
    return 0


def cmd_sweep(args):
    from pathlib import Path

    from semifl.experiments.sweep import sweep
    from semifl.learn.data import load_idx_dataset

    ds = load_idx_dataset(args.data)
    sweep(ds, args.rounds, Path(args.out), _floats(args.s), _floats(args.p), args.seed or 0,
          on_cell=lambda s, p, acc, up: print(f"S={s} P={p}: accuracy {100 * acc:.2f}%, uplink {up / 1e9:.2f} GB", flush=True))
    print(f"wrote {args.out}/sweep.json and sweep.png")
    return 0


def cmd_flash(args):
    import os
    from pathlib import Path

    from semifl.flash.build import BuildError
    from semifl.flash.flash import FlashError, FlashJob, flash

    job = FlashJob(port=args.port, board=args.board, device_id=args.device_id,
                   build=Path(args.build or f"build/flash-{args.device_id}"), broker=args.broker_url,
                   wifi_ssid=args.wifi_ssid or "", wifi_password=os.environ.get("SEMIFL_WIFI_PASSWORD", ""),
                   firmware=Path(args.firmware) if args.firmware else None,
                   samples=Path(args.samples) if args.samples else None,
                   labels=Path(args.labels) if args.labels else None, phases=args.phases)
    try:
        return flash(job, dry_run=args.dry_run)
    except (FlashError, BuildError) as e:
        print(f"semifl flash: {e}", file=sys.stderr)
        return 2


def cmd_report(args):
    from pathlib import Path

    from semifl.service.report import energy_table, plot_energy_vs_accuracy

    rows = energy_table([Path(r) for r in args.runs])
    for r in rows:
        per = ", ".join(f"{k} {v:.1f} J" for k, v in r["energy_j_by_class"].items())
        print(f"{r['run']}: {r['strategy']}, {r['rounds']} rounds, accuracy {100 * r['final_accuracy']:.2f} %, "
              f"devices {r['energy_j']:.1f} J ({per}; meter {'/'.join(r['meter']) or 'none'})")
    print(f"wrote {plot_energy_vs_accuracy(rows, Path(args.out))}")
    return 0


def cmd_models(args):
    from pathlib import Path

    from semifl.models import MODELS

    if args.action == "list":
        for m in MODELS.values():
            print(m.describe())
        return 0
    import json

    from semifl.models.export import export

    repo_cards = Path(__file__).resolve().parents[2] / "models" / "cards"
    card = export(args.name, Path(args.out or f"models/{args.name}"), args.params, args.data,
                  cards=repo_cards if repo_cards.parent.exists() else None)
    print(json.dumps(card, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="semifl", description="Semi-federated learning on IoT fleets over MQTT")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="broker + host + virtual fleet: one SemiFL experiment end to end")
    _run_flags(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("broker", help="start the embedded MQTT broker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.set_defaults(fn=cmd_broker)
    p = sub.add_parser("serve", help="the host service (its session and round object) against --broker")
    _run_flags(p)
    p.add_argument("--state", default="semifl-state.db", help="SQLite state; a restart resumes from it")
    p.add_argument("--wait-devices", type=int, default=1, help="devices to wait for before round 1")
    p.add_argument("--wait-s", type=float, default=300)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("fleet", help="start virtual devices (real device code) against --broker")
    _run_flags(p)
    p.add_argument("--root", default="fleet", help="where each device's flash (data, config) goes")
    p.set_defaults(fn=cmd_fleet)
    p = sub.add_parser("reproduce", help="reproduce a seed paper's experiment in-process (semifl: CL, FL, SemiFL)")
    p.add_argument("paper", choices=["semifl"])
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--out", default="runs/reproduce-semifl")
    p.add_argument("--baselines", help="comma-separated subset, e.g. cl,semifl (default: all)")
    p.add_argument("--data", help="folder of IDX files (default: Debian's Fashion-MNIST)")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float, help="step size on our per-sample mean loss (default: the seed's 0.1 on "
                                            "MATLAB's sample-and-class mean, i.e. 0.01)")
    p.set_defaults(fn=cmd_reproduce)
    p = sub.add_parser("report", help="energy vs accuracy of finished runs (their summary.json)")
    p.add_argument("runs", nargs="+", help="run folders, e.g. runs/semifl runs/fedavg")
    p.add_argument("--out", default="energy_vs_accuracy.png")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("models", help="model definitions; `export NAME`: int8 .tflite, C array, card (needs [export])")
    p.add_argument("action", choices=["list", "export"])
    p.add_argument("name", nargs="?", default="mlp-fmnist")
    p.add_argument("--out", help="output folder (default models/NAME)")
    p.add_argument("--params", help=".npz of float parameters (arr_0..) instead of training, e.g. a run's final_model.npz")
    p.add_argument("--data", help="IDX folder (default Debian's Fashion-MNIST)")
    p.set_defaults(fn=cmd_models)
    p = sub.add_parser("flash", help="build the MCU node (.mpy), copy it and a config.json to a board, verify")
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--board", default="esp32", choices=["esp32", "esp32s3", "rp2040w"])
    p.add_argument("--device-id", required=True)
    p.add_argument("--broker-url", default="mqtt://192.168.1.10:1883", help="the host's broker as the board sees it")
    p.add_argument("--wifi-ssid", help="Wi-Fi network (password from $SEMIFL_WIFI_PASSWORD, never argv)")
    p.add_argument("--firmware", help="MicroPython image to write first with esptool (erases the flash)")
    p.add_argument("--samples", help="the sensor's samples file to store (n x 784 uint8)")
    p.add_argument("--labels", help="its labels file (n uint8)")
    p.add_argument("--build", help="build folder (default build/flash-<device id>)")
    p.add_argument("--phases", action="store_true", help="the node marks its phases on its status topic (HIL bench)")
    p.add_argument("--dry-run", action="store_true", help="print the esptool/mpremote commands, one per line")
    p.set_defaults(fn=cmd_flash)
    p = sub.add_parser("sweep", help="SemiFL over sample selection S x pruning P, with heatmaps")
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--out", default="runs/sweep-semifl")
    p.add_argument("--s", default="0,0.05,0.1,0.3,0.5,1", help="S values, comma-separated")
    p.add_argument("--p", default="0,0.3,0.6,0.8", help="P values, comma-separated")
    p.add_argument("--data")
    p.add_argument("--seed", type=int)
    p.set_defaults(fn=cmd_sweep)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from semifl.config import ConfigError
    from semifl.learn.data import DataNotFound

    try:
        return args.fn(args)
    except (DataNotFound, ConfigError) as e:
        print(f"semifl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
