"""Run the real MicroPython node (firmware/micropython) under CPython as a virtual MCU, where the
MicroPython unix port is not installed: `python -m semifl.sim.mcu_runner --config config.json`.

It runs the node's own entry point (`main.py`) unchanged, as the unix port does; the simulator only
supplies what a board would: an MQTT client with umqtt.simple's interface (`umqtt_paho`, over
paho-mqtt) and the simulated radio and battery (`link`, as `semifl flash --sim` builds it).
"""
import argparse
import runpy
import sys
import types
from pathlib import Path

from semifl.device import link as simulated

from . import umqtt_paho

FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware" / "micropython"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="semifl-mcu-sim")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    umqtt = types.ModuleType("umqtt")
    umqtt.simple = umqtt_paho
    sys.modules.update({"umqtt": umqtt, "umqtt.simple": umqtt_paho, "link": simulated})
    sys.path.insert(0, str(FIRMWARE_DIR))
    sys.argv = [str(FIRMWARE_DIR / "main.py"), args.config]
    runpy.run_path(str(FIRMWARE_DIR / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
