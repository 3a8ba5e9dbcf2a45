"""In-process runs (`semifl reproduce`, sweeps, benchmarks): the very round object a run over MQTT uses,
driven over an in-memory broker with the device code in the same process (`sim.inprocess`). Nothing
here is a second implementation of a round, so an in-process run and a run over MQTT with the same
seed end in the same bits by construction; only time is not simulated (no latency, no waiting)."""
from __future__ import annotations

from semifl.config import RunConfig
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.sim.inprocess import InProcessFleet
from semifl.transport.memory import MemoryBroker, MemoryLink

from .build import limits, make_round
from .run import fleet_specs, load_data


def run_inprocess(cfg: RunConfig, data=None, on_round=None, *, strategy=None, init=None, specs=None, attackers=None,
                  store=None):
    """Run `cfg` in-process. data: its Dataset or HARData (default: loaded as `semifl run` does);
    strategy / init: a federated strategy object and initial parameters instead of the registry's
    and the seeded ones; specs: the fleet (default: the one `semifl run` starts); attackers: device id ->
    the Byzantine behaviour its FL client plays (`semifl.sim.attacks`); store: the host's Store (default: a
    new one in memory; a file's store resumes its run, as a restarted host does). Each round's metrics
    go to on_round with `bytes_by_class` ({"pi"|"mcu": [up, down]}) added. -> the round object
    (`.params`, `.session`, and what its kind keeps: `.server` of split learning, ...), with `.fleet`
    the in-process devices (for experiments that look inside them after the run)."""
    data = load_data(cfg) if data is None else data
    specs = specs if specs is not None else fleet_specs(cfg, data)
    broker = MemoryBroker()
    session = Session(MemoryLink(broker), store or Store(":memory:", payloads=False), limits(cfg))
    fleet = InProcessFleet(broker, specs, None if cfg.family == "personal" else data, getattr(data, "n_classes", None),
                           host_threads=cfg.host.threads, attackers=attackers)
    rounds_obj = make_round(cfg, session, data, [s.id for s in specs], strategy, init)
    rounds_obj.fleet = fleet
    if not session.wait_for_devices(len(specs), 1.0):
        raise RuntimeError(f"{len(session.registry.online)} of {len(specs)} in-process devices reported themselves")
    classes = {s.id: s.device_class for s in specs}

    def each(m):
        by = {}
        for dev, (up, down) in m["device_bytes"].items():
            row = by.setdefault(classes.get(dev, "?"), [0, 0])
            row[0] += up
            row[1] += down
        m["bytes_by_class"] = by
        if on_round:
            on_round(m)
    session.run(rounds_obj, cfg.rounds, on_round=each)
    return rounds_obj
