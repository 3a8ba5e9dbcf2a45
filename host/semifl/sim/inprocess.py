"""The fleet of an in-process run: every device is the device code a Pi runs (`semifl.device.Device`
with the roles of its class), on a `MemoryBroker` instead of MQTT.

Pi-class devices play the FL client, the split-learning client and (with test windows) the PerFit
client, exactly as the Pi agent does; MCU-class devices play the CL uploader (`semifl.device.cl`,
the node's `cl` role, byte for byte). Time is not simulated here: links have no latency, slow boards
do not wait, and a round's deadline passes at once when nothing is left to deliver. Devices compute
on one BLAS thread, as a device process does, so an in-process run ends in the bits of a run over
MQTT with the same seed.
"""
from __future__ import annotations

from threadpoolctl import ThreadpoolController

from semifl.device import CLUploader, Device, FLClient, PersonalClient, PersonalRole, SecAggRole, SplitClientRole
from semifl.device.link import SimBattery, SimRadio
from semifl.protocol import wire
from semifl.transport.memory import MemoryBroker

from . import attacks
from .fleet import DeviceSpec, shard

TIMED = ("latency_s", "bandwidth_bps", "slowdown", "train_s")   # what only a real-time fleet simulates


class InProcessFleet:
    def __init__(self, broker: MemoryBroker, specs: list[DeviceSpec], ds=None, n_classes: int | None = None,
                 host_threads: int = 1, attackers: dict[str, str] | None = None):
        """host_threads: the BLAS threads the host computes with around the devices' deliveries; with
        more than one, each delivery limits the device to one (~10 us a message), as a device process has.
        attackers: device id -> a Byzantine behaviour (`sim.attacks.ATTACKS`) its FL client plays."""
        self.broker = broker
        self.attackers = dict(attackers or {})
        self.devices: dict[str, Device] = {}
        self._blas = ThreadpoolController() if host_threads != 1 else None
        for spec in specs:
            dev = self._device(spec, ds, n_classes or (ds.n_classes if ds is not None else 10))
            self.devices[spec.id] = dev
            on = lambda topic, payload, dev=dev: self._handle(dev, topic, payload)   # noqa: E731
            for topic in (wire.host_topic("round"), wire.dev_topic(spec.id, wire.T_TASK), wire.dev_topic(spec.id, wire.T_DOWN)):
                broker.subscribe(topic, on)
            self._handle(dev, "_connected", b"")

    def _device(self, spec: DeviceSpec, ds, n_classes: int) -> Device:
        data = spec.data if spec.data is not None else dict(zip(("x", "y"), shard(ds, spec)))
        sim = {k: v for k, v in spec.sim.items() if k not in TIMED}
        cfg = {"id": spec.id, "class": spec.device_class, "raw_ok": spec.raw_ok, "n_classes": n_classes, "sim": sim,
               "board": spec.sim.get("board", "rpi4" if spec.device_class == "pi" else "esp32"), "flash": 0, **spec.config}
        if spec.device_class == "pi":
            cfg.update(max_chunk=65536, ram=int(sim.get("ram", 1 << 30)), cpu_score=1e4)
            fl = attacks.role(self.attackers[spec.id]) if spec.id in self.attackers else FLClient
            roles = [fl, SecAggRole, SplitClientRole]   # as the Pi agent
            if "x_test" in data:   # its own test windows: it personalizes and scores its personal model
                client = PersonalClient(spec.id, data["x"], data["y"], data["x_test"], data["y_test"], None,
                                        data.get("public"), n_classes)
                roles.append(lambda d: PersonalRole(d, client))
        else:
            cfg.update(max_chunk=4096, ram=110_000, cpu_score=1.0, fw="semifl-mcu/0.1")
            roles = [CLUploader]
        return Device(cfg, data["x"], data["y"], self.broker.publish, SimRadio(sim), SimBattery(sim), roles,
                      sleep=lambda s: None)

    def _handle(self, dev: Device, topic: str, payload: bytes):
        if self._blas is None:
            return dev.serve(topic, payload)
        with self._blas.limit(limits=1):
            return dev.serve(topic, payload)
