# semifl MCU node entry point: on a board, after boot.py joined Wi-Fi; on the MicroPython unix port
# (virtual fleet, CI), with the link and power simulated from config.json's "sim" section.
#   board:     runs at boot
#   unix port: cd <device dir> && micropython -X heapsize=<board heap> main.py [config.json]
import sys

from semifl_node.node import Node, load_config


class BoardRadio:
    def __init__(self, wlan):
        self.wlan = wlan

    def rssi(self, rnd):
        try:
            return self.wlan.status("rssi")
        except Exception:
            return None

    def delay(self, nbytes):
        pass

    def drops(self, rnd):
        return False


class MainsBattery:
    def level(self):
        return 1.0

    def transmit(self, nbytes):
        pass


def main(path="config.json"):
    from umqtt.simple import MQTTClient

    cfg = load_config(path)
    try:
        import network
        radio, battery = BoardRadio(network.WLAN(network.STA_IF)), MainsBattery()
    except ImportError:  # the unix port has no radio: the virtual fleet's simulated one
        from link import SimBattery, SimRadio
        radio, battery = SimRadio(cfg.get("sim", {})), SimBattery(cfg.get("sim", {}))
    # mqtt://[user:password@]host[:port]; an authenticated broker knows the device by its username
    cred, _, where = cfg["broker"].split("//")[-1].rpartition("@")
    user, _, password = cred.partition(":")
    host, _, port = where.partition(":")
    client = MQTTClient(cfg["id"], host, port=int(port or 1883), user=user or None, password=password or None,
                        keepalive=int(cfg.get("keepalive", 60)))
    Node(cfg, client, radio, battery).run()


main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
