"""SecAgg+ over the real protocol (service/rounds/secure.py, device/secagg.py): the host's session and
round object and the devices' own code (`Device` with `FLClient` + `SecAggRole`) over the in-memory
broker, as in-process runs compose them."""
import logging

import numpy as np
import pytest
from semifl.config import Federated, Trust
from semifl.device import CLUploader, Device, DeviceError, FLClient
from semifl.device.fl import local_update, update_masks
from semifl.device.link import SimBattery, SimRadio
from semifl.device.secagg import SecAggRole
from semifl.fleet.planner import task_seed
from semifl.learn import dp, mlp
from semifl.learn.secagg import SecAggServer, error_bound, quant_range, quantize
from semifl.learn.strategy import FedAvg, SemiFL
from semifl.protocol import wire
from semifl.service.rounds.federated import FederatedRound
from semifl.service.rounds.secure import SecureRound
from semifl.service.session import Limits, Session
from semifl.service.store import Store
from semifl.transport.memory import MemoryBroker, MemoryLink

N_FL = 6
LAYERS = (784, 32, 10)


class Dropper(SecAggRole):
    """A SecAgg client that goes silent from stage `at` on (it answers nothing more this round)."""
    at = None

    def run(self, task):
        return True if task.get("stage") == self.at else super().run(task)

    def on_blob(self, meta, arrays):
        if meta.get("stage") != self.at:
            super().on_blob(meta, arrays)


def dropper(stage):
    return type(f"DropAt{stage}", (Dropper,), {"at": stage})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    out = {}
    for i in range(N_FL + 2):   # FL Pis hold a few classes each, two MCUs upload samples
        y = rng.integers(0, 10, 120).astype(np.uint8)
        x = np.clip(rng.normal(40 + 20 * y[:, None], 40, (120, 784)), 0, 255).astype(np.uint8)
        out[i] = (x, y)
    return out


def rig(data, secure: bool, strategy=None, drop: dict | None = None, roles=None, store=None, cfg=None, **kw):
    """Host session + round object + in-process devices on one MemoryBroker."""
    broker = MemoryBroker()
    store = store or Store(":memory:")
    session = Session(MemoryLink(broker), store, Limits(ready_timeout_s=1.0, collect_timeout_s=5.0))
    devices = {}
    strategy = strategy or FedAvg()
    n_cl = 2 if strategy.uses_cl else 0
    for i in range(N_FL + n_cl):
        pi = i < N_FL
        dev_id = f"pi-{i:02d}" if pi else f"mcu-{i:02d}"
        cfg_d = {"id": dev_id, "class": "pi" if pi else "mcu", "raw_ok": not pi, "n_classes": 10, "flash": 0,
                 "max_chunk": 65536 if pi else 4096, "ram": 1 << 30 if pi else 110_000, "cpu_score": 1e4 if pi else 1.0}
        if pi:
            role = (drop or {}).get(dev_id, SecAggRole)
            rs = roles(dev_id) if roles else ([FLClient, role] if secure else [FLClient])
        else:
            rs = [CLUploader]
        x, y = data[i]
        dev = Device(cfg_d, x, y, broker.publish, SimRadio({"rssi": [-50.0 - i]}), SimBattery({}), rs,
                     sleep=lambda s: None)
        devices[dev_id] = dev
        for topic in (wire.host_topic("round"), wire.dev_topic(dev_id, wire.T_TASK), wire.dev_topic(dev_id, wire.T_DOWN)):
            broker.subscribe(topic, lambda t, p, dev=dev: dev.serve(t, p))
        dev.serve("_connected", b"")
    # every FL client takes part, so plain FedAvg merges the same clients the secure round sums
    fed = cfg or Federated(fl_uploaders=N_FL, over_select=0.0, cl_uploaders=n_cl, int8_every=0)
    kind = SecureRound if secure else FederatedRound
    rounds = kind(session, strategy, fed, mlp.init_params(LAYERS, seed=1), lambda p: (0.0, 0.0), seed=3, **kw)
    assert session.wait_for_devices(len(devices), 1.0)
    session.handler = rounds
    return session, rounds, devices, broker


def close(a, b, atol):
    return all(np.allclose(x, y, rtol=0, atol=atol) for x, y in zip(a, b))


def bound(m, clip=10.0):
    """The stated quantization bound, m C / R per entry of the sum (the mean's error is that over the
    sum of weights, >= 1 here), plus float32 rounding of the step: a few ulps of parameters below 0.5."""
    return error_bound(clip, N_FL, m) + 4 * float(np.spacing(np.float32(0.5)))


@pytest.mark.parametrize("strategy", [FedAvg, lambda: SemiFL(lr=0.1)], ids=["fedavg", "semifl"])
def test_secure_round_gives_plain_fedavg_up_to_quantization(data, strategy):
    plain = rig(data, False, strategy())
    secure = rig(data, True, strategy())
    for rnd in (1, 2):
        mp = plain[1].run(rnd)
        ms = secure[1].run(rnd)
        assert mp["participants"]["fl"] == [f"pi-{i:02d}" for i in range(N_FL)]
        assert ms["secagg"]["survivors"] == mp["participants"]["fl"] and ms["secagg"]["dropped"] == []
        assert ms["participants"]["fl"] == ["secagg"]
        assert ms["participants"]["cl"] == mp["participants"]["cl"]
        assert close(plain[1].params, secure[1].params, bound(N_FL))
        moved = max(float(np.abs(a - b).max()) for a, b in zip(secure[1].params, mlp.init_params(LAYERS, seed=1)))
        assert moved > 100 * bound(N_FL)   # the models moved: the comparison is not of two initial models
    assert ms["rejected"] == {} and ms["device_errors"] == {}


def test_the_host_stores_and_logs_no_individual_update(data, caplog):
    session, rounds, devices, _ = rig(data, True)
    caplog.set_level(logging.DEBUG)
    rows, accept = [], session.store.accept
    session.store.accept = lambda rnd, dev, kind, n, blob: (rows.append((dev, kind, n, bytes(blob))),
                                                             accept(rnd, dev, kind, n, blob))
    m = rounds.run(1)
    assert m["secagg"]["survivors"] == sorted(devices)
    # what the host made durable: one masked vector per client, nothing else
    assert sorted((d, k) for d, k, _, _ in rows) == [(d, "masked") for d in sorted(devices)]
    assert session.store.contribution_keys(1) == [(d, "masked", n) for d, _, n, _ in sorted(rows)]
    # each device's own update, as its FL client computed it, quantized as its SecAgg input would be
    params = mlp.init_params(LAYERS, seed=1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for dev_id, kind, n, blob in rows:
        meta, tensors = wire.decode_blob(blob)
        assert set(meta) == {"kind", "round", "task", "device", "n", "v", "tensors"}   # no norm, no update
        y = np.frombuffer(tensors[0][4], "<i4").view(np.uint32)
        dev = devices[dev_id]
        task = {"seed": task_seed(3, 1, dev_id), "fraction": rounds.cfg.fl_fraction, "prune": rounds.cfg.prune,
                "lr": 0.1, "epochs": 1}
        delta, _, _ = local_update(params, dev.x, dev.y, task, update_masks(params, task))
        x = np.concatenate([a.reshape(-1) for a in delta])
        q = quantize(x, 10.0, quant_range(N_FL))
        assert np.mean(y[:x.size] == q) < 1e-3   # what is stored is not the (quantized) update
        assert abs(np.corrcoef(y[:x.size].astype(float), q.astype(float))[0, 1]) < 0.05
        assert y.mean() / 2 ** 32 == pytest.approx(0.5, abs=0.01)   # masked: uniform on [0, 2^32)
        big = x[np.argsort(-np.abs(x))[:20]]
        assert not any(f"{v:.4g}" in text for v in big)   # no value of the update in any log line
    assert "norm" not in text   # nor its norm
    # the host's state holds no masked vector or update once the round is over
    assert rounds.sa.masked == {} and rounds.blobs == {}


@pytest.mark.parametrize("stage", ["keys", "shares", "masked", "unmask"])
def test_a_third_dropping_mid_round_still_gives_the_survivors_fedavg(data, stage):
    """Two of six clients (a third) go silent at `stage`: before sending keys, before their shares,
    before their masked vector (their masks are removed with rebuilt keys), after it (their self masks
    are removed and their input stays in the sum, as SecAgg's survivors)."""
    gone = ["pi-01", "pi-04"]
    answer = {"keys": "setup", "shares": "keys", "masked": "shares", "unmask": "unmask"}[stage]
    _, rounds, devices, _ = rig(data, True, drop={d: dropper(answer) for d in gone})
    m = rounds.run(1)
    members = sorted(devices)
    in_sum = members if stage == "unmask" else [d for d in members if d not in gone]
    assert m["secagg"]["survivors"] == in_sum, m["secagg"]
    # plain FedAvg over exactly the clients whose updates are in the sum
    plain = rig(data, False)
    for d in set(members) - set(in_sum):   # they trained and went silent: a plain round never hears from them
        plain[2][d].cfg["silent"] = True
    plain[1].run(1)
    assert plain[1].session.store.contribution_keys(1) == [(d, "update", plain[1].expected_n(d)) for d in in_sum]
    assert close(plain[1].params, rounds.params, bound(len(in_sum)))


def test_more_than_secagg_can_recover_closes_the_round_without_fl(data, caplog):
    gone = ["pi-00", "pi-02", "pi-03"]   # half of six: t = 4 holders are needed
    _, rounds, _, _ = rig(data, True, drop={d: dropper("keys") for d in gone})
    before = [p.copy() for p in rounds.params]
    m = rounds.run(1)
    assert m["secagg"]["failed"] == "too_many_dropouts" and m["secagg"]["failed_rounds"] == 1
    assert m["participants"]["fl"] == []
    assert close(before, rounds.params, 0)
    assert any("no FL part" in r.getMessage() for r in caplog.records)
    m = rounds.run(2)   # the next round starts afresh (the silent ones still drop at keys: fails again)
    assert m["secagg"]["failed_rounds"] == 2


def test_a_device_offline_mid_round_is_dropped_and_the_round_goes_on(data):
    class Off(SecAggRole):   # goes offline (last will) as the host sends it the others' keys
        def on_blob(self, meta, arrays):
            broker.publish(wire.dev_topic(self.dev.id, wire.T_PRESENCE), b"offline", retain=True)

    _, rounds, _, broker = rig(data, True, drop={"pi-05": Off})
    m = rounds.run(1)
    assert m["secagg"]["survivors"] == [f"pi-{i:02d}" for i in range(5)]


def test_devices_refuse_what_a_host_must_not_send_and_keep_serving(data):
    _, rounds, devices, broker = rig(data, True)
    dev = devices["pi-00"]
    role = next(r for r in dev.roles if isinstance(r, SecAggRole))
    with pytest.raises(DeviceError):   # no round in progress
        role.run({"round": 1, "task": 1, "role": "secagg", "stage": "setup", "setup": {}})
    with pytest.raises(DeviceError):
        role.run({"round": 1, "task": 1, "role": "secagg", "stage": "train", "seed": 1, "clip": -1.0})
    with pytest.raises(DeviceError):
        role.on_blob({"kind": "secagg", "stage": "keys", "round": 1, "task": 1, "msg": {"keys": []}}, [])
    # over the wire, a malformed stage is an error status, never a dead device; the round still ends
    before = sum(dev.ignored.values())
    broker.publish(wire.dev_topic("pi-00", wire.T_TASK), b'{"v": 1, "role": "secagg", "round": "x"}')
    broker.deliver()
    assert sum(dev.ignored.values()) == before + 1
    m = rounds.run(1)
    assert len(m["secagg"]["survivors"]) == N_FL


def test_a_host_asking_for_both_secrets_of_a_client_is_refused(data, monkeypatch):
    """An honest client never reveals both b_j and sk1_j: an unmask request naming j as survivor and
    dropped is refused (an error status; the host counts that client as dropped)."""
    rounds = rig(data, True)[1]
    real = SecAggServer.unmask_out

    def greedy(self):
        out = real(self)
        out[1]["dropped"] = [j for j in out[1]["survivors"] if j != 1][:1]
        return out
    monkeypatch.setattr(SecAggServer, "unmask_out", greedy)
    m = rounds.run(1)
    assert list(m["device_errors"]) == ["pi-00"]
    assert m["secagg"]["survivors"] == [f"pi-{i:02d}" for i in range(N_FL)]   # its masked input is in the sum


def test_client_dp_noises_the_secure_sum_and_counts_each_client_once(data):
    def with_dp():
        s = FedAvg()
        d = dp.ClientDP(noise=0.0, clip=0.05, expected_clients=N_FL, seed=1)
        s.fl_merge = d.merge
        return s, d
    sp, dplain = with_dp()
    ss, dsec = with_dp()
    plain = rig(data, False, sp)
    secure = rig(data, True, ss)
    plain[1].run(1)
    m = secure[1].run(1)
    assert m["secagg"]["clip"] == 0.05 and dsec.steps == 1 and dsec.rounds == dplain.rounds
    assert close(plain[1].params, secure[1].params, error_bound(0.05, N_FL) + 1e-6)


def test_refuses_what_it_cannot_do(data):
    for cfg, trust in ((Federated(compression="auto"), None), (Federated(sparse_updates=True), None),
                       (Federated(), Trust(aggregation="median"))):
        with pytest.raises(ValueError, match="secure aggregation cannot"):
            SecureRound(None, FedAvg(), cfg, mlp.init_params(LAYERS), lambda p: (0, 0), trust=trust)


def test_fl_clients_that_cannot_mask_are_not_planned(data):
    _, rounds, _, _ = rig(data, True, roles=lambda d: [FLClient] if d == "pi-05" else [FLClient, SecAggRole])
    m = rounds.run(1)
    assert "secagg" in m["idle"]["pi-05"] and "pi-05" not in m["tasked"]
    assert m["secagg"]["survivors"] == [f"pi-{i:02d}" for i in range(5)]
