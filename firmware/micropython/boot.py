# Join Wi-Fi from config.json before main.py runs (boards only; the unix port has no `network`).
import json

try:
    import network
    import time

    with open("config.json") as f:
        cfg = json.load(f)
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg["wifi_ssid"], cfg["wifi_password"])
        for _ in range(100):
            if wlan.isconnected():
                break
            time.sleep_ms(100)
except ImportError:
    pass
