"""Run the real MicroPython node (firmware/micropython) under CPython as a virtual MCU.

`python -m semifl.sim.mcu_runner --config config.json`. The node's files are imported unchanged; the
simulator supplies only what a board would: an MQTT client with umqtt.simple's interface, the radio
and the battery.
"""
import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from .link import SimBattery, SimRadio
from .umqtt_paho import MQTTClient

FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware" / "micropython"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="semifl-mcu-sim")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    with open(args.config) as f:
        cfg = json.load(f)
    sys.path.insert(0, str(FIRMWARE_DIR))
    from semifl_node.node import Node

    url = urlparse(cfg["broker"])
    client = MQTTClient(cfg["id"], url.hostname, port=url.port or 1883, keepalive=60)
    sim = cfg.get("sim", {})
    Node(cfg, client, SimRadio(sim), SimBattery(sim)).run()


if __name__ == "__main__":
    main()
