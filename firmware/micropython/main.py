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
    cfg = load_config(path)
    try:
        import network
        radio, battery = BoardRadio(network.WLAN(network.STA_IF)), MainsBattery()
    except ImportError:  # the unix port has no radio: the virtual fleet's simulated one
        from link import SimBattery, SimRadio
        radio, battery = SimRadio(cfg.get("sim", {})), SimBattery(cfg.get("sim", {}))
    # mqtt[s]://[user:password@]host[:port]; an authenticated broker knows the device by its username
    scheme, _, rest = cfg["broker"].partition("://")
    cred, _, where = rest.rpartition("@")
    user, _, password = cred.partition(":")
    host, _, port = where.partition(":")
    tls = scheme in ("mqtts", "ssl")
    kw = dict(port=int(port or (8883 if tls else 1883)), user=user or None, password=password or None,
              keepalive=int(cfg.get("keepalive", 60)))
    if sys.implementation.name == "micropython":
        # TLS with the fleet's CA (DER, `semifl certs issue` writes ca.der) and a bound on what it reads
        from semifl_node.mqtt import MQTTClient
        ca = None
        if tls:
            with open(cfg["ca"], "rb") as f:
                ca = f.read()
        client = MQTTClient(cfg["id"], host, ssl=tls, ca=ca, server_hostname=cfg.get("server_hostname"),
                            # the host's chunks are at most max_chunk data bytes (and a header): room for that, no more
                            max_msg=int(cfg.get("max_msg", max(8192, 2 * int(cfg.get("max_chunk", 4096))))), **kw)
    else:   # CPython (sim/mcu_runner.py): umqtt's interface over paho, which bounds and encrypts nothing here
        from umqtt.simple import MQTTClient
        client = MQTTClient(cfg["id"], host, **kw)
    Node(cfg, client, radio, battery).run()


main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
