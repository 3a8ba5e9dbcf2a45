# semifl MCU node entry point on a board: join Wi-Fi (boot.py), then serve as a CL uploader.
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


def main():
    import network
    from umqtt.simple import MQTTClient

    cfg = load_config()
    host, _, port = cfg["broker"].split("//")[-1].partition(":")
    client = MQTTClient(cfg["id"], host, port=int(port or 1883), keepalive=60)
    Node(cfg, client, BoardRadio(network.WLAN(network.STA_IF)), MainsBattery()).run()


main()
