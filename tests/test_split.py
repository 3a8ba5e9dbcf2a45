"""Split learning over MQTT (IoTSL's SL, seed 002): the same model in-process and over the broker,
every value counted against the seed's formula, bad smashed data refused, a device that drops out
mid-epoch skipped with the next one continuing from the last f_a the host holds."""
import time

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest

from semifl.config import RunConfig
from semifl.learn.data import Dataset
from semifl.learn.split import SplitServer, comm_params
from semifl.models import get
from semifl.protocol import wire
from semifl.protocol.tensors import from_wire, to_wire
from semifl.app import run as experiment
from semifl.app.inprocess import run_inprocess
from semifl.device import SplitClient, SplitError
from semifl.learn.registry import spec
from semifl.service.rounds.split import SplitRound
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.transport.mqtt import HostLink, parse_broker_url

SPEC = get("splitcnn-mnist")
F_A, F_B = SPEC.network().split(SPEC.cut)
F = int(np.prod(F_A.out_shapes[-1]))      # 64 x 14 x 14 = 12,544 values per smashed row
W = F_A.n_params                          # 37,568


def small(ds, n):
    return Dataset(ds.name, ds.x_train[:n], ds.y_train[:n], ds.x_test[:200], ds.y_test[:200], ds.classes)


def cfg(tmp_path, embedded, **kw):
    base = dict(strategy="sl", rounds=2, fl_devices=3, cl_devices=0, partition="iid", sl_lr=0.05, sl_batch=32, sl_batches=0,
                out=str(tmp_path / "run"), broker=embedded, plot=False, int8_every=0)
    return RunConfig.make(**{**base, **kw})


def raw_device(url, ids, roles=("sl",)):
    """A bare MQTT client that speaks for devices `ids` (caps published) and collects what arrives on
    the first one's down topic."""
    host, port = parse_broker_url(url)
    got = []
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{time.monotonic_ns()}")
    dev.on_message = lambda c, u, m: got.append(m.payload)
    dev.connect(host, port)
    dev.loop_start()
    dev.subscribe(wire.dev_topic(ids[0], wire.T_DOWN), 1)
    time.sleep(0.3)
    for who in ids:
        caps = {"v": 1, "id": who, "class": "pi", "proto": [1], "ram": 1 << 30, "flash": 1 << 30, "cpu_score": 1e3,
                "battery": 1.0, "rssi": -50.0, "n_samples": 8, "hist": [8] + [0] * 9, "raw_ok": False,
                "max_chunk": 65536, "roles": list(roles)}
        dev.publish(wire.dev_topic(who, wire.T_CAPS), wire.encode_json(caps), qos=1).wait_for_publish(10)
    return dev, got


def first_blob(got, timeout=10.0):
    """(kind, meta, tensors) of the first whole blob among the chunks in `got`."""
    asm, deadline, i = None, time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if i < len(got):
            kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(got[i], 1 << 24)
            asm = asm or wire.Assembler(kind, blob_id, count, blob_len)
            i += 1
            if asm.add(kind, blob_id, seq, count, blob_len, bcrc, data):
                return (kind,) + wire.decode_blob(bytes(asm.buf))
        else:
            time.sleep(0.05)
    raise AssertionError("no whole blob arrived")


def test_the_seeds_epoch_count():
    # Section IV: 12,000 images per Pi, smashed 64x14x14, 37,824 parameters: 3.01e8 values an epoch
    assert comm_params(12_000, 64 * 14 * 14, 37_824) == 301_105_824
    assert comm_params(10, F, W) == 10 * (2 * F + 1) + W


@pytest.mark.parametrize("smashed", ["float32", "int8"])
def test_same_model_in_process_and_over_mqtt_and_every_value_counted(tmp_path, fashion, embedded, smashed):
    ds = small(fashion, 240)   # 3 devices x 80 samples: batches of 32, 32, 16
    c = cfg(tmp_path, embedded, smashed=smashed)
    summary = experiment.run_experiment(c, ds=ds)
    over_mqtt = np.load(tmp_path / "run" / "final_model.npz")
    server = run_inprocess(c, ds).server
    for i, p in enumerate(server.params):
        assert np.array_equal(over_mqtt[f"arr_{i}"], p), f"tensor {i} differs"
    for r in summary["rounds"]:
        assert r["rejected"] == {} and r["device_errors"] == {} and r["participants"]["fl"] == ["pi-00", "pi-01", "pi-02"]
        # each device's own CPU seconds of its passes: what the energy meter charges as training
        assert set(r["device_times_s"]) == {"pi-00", "pi-01", "pi-02"} and all(t["local"] > 0 for t in r["device_times_s"].values())
        chain = r["sl_chain"]   # sequential SL: each client starts from the f_a the previous one handed back
        assert chain["pi-01"]["start"] == chain["pi-00"]["end"] and chain["pi-02"]["start"] == chain["pi-01"]["end"]
        assert all(v["end"] != v["start"] for v in chain.values())   # and each one trained it
        for dev, v in r["device_values"].items():
            # the seed's N(2F + 1) + w, plus the host relay's second hop of f_a (host -> next device)
            assert v["up"] + v["down"] == comm_params(80, F, W) + W, dev
            up, down = r["device_bytes"][dev]
            width = 4 if smashed == "float32" else 1
            # bytes on MQTT: the values at their width (gradients float32), plus headers and statuses
            assert up >= 80 * F * width + 4 * W and down >= 80 * F * 4 + 4 * W
            assert up <= 1.02 * (80 * F * width + 4 * W) + 4096 and down <= 1.02 * (80 * F * 4 + 4 * W) + 4096
    assert summary["final_accuracy"] > 0.3
    assert all(d["energy_by_phase"]["train"] > 0 and d["energy_by_phase"]["upload"] > 0 for d in summary["devices"])


def test_splitfed_averages_the_clients_f_a(tmp_path, fashion, embedded):
    ds = small(fashion, 240)
    summary = experiment.run_experiment(cfg(tmp_path, embedded, strategy="splitfed", rounds=1), ds=ds)
    r = summary["rounds"][0]
    assert r["participants"]["fl"] == ["pi-00", "pi-01", "pi-02"] and r["rejected"] == {}
    assert len({v["start"] for v in r["sl_chain"].values()}) == 1   # all start from the same f_a
    server = SplitServer(F_B, [], [np.zeros(1, np.float32)])
    server.average_a([([np.array([1.0], np.float32)], 1), ([np.array([4.0], np.float32)], 3)])
    assert server.params_a[0].tolist() == [3.25]


def test_a_device_that_drops_mid_epoch_is_skipped(tmp_path, fashion, embedded, monkeypatch):
    original = SplitRound.on_smashed

    def kill_after_second_batch(self, dev, meta, tensors):
        original(self, dev, meta, tensors)
        if dev == "pi-01" and meta["batch"] == 1:   # pull its plug: the process dies mid-epoch
            for p in psutil.process_iter(["cmdline"]):
                if any("pi-01" in a and a.endswith("config.json") for a in p.info["cmdline"] or []):
                    p.kill()

    monkeypatch.setattr(SplitRound, "on_smashed", kill_after_second_batch)
    ds = small(fashion, 240)
    # each device in a process of its own (not in a fleet worker): the process the plug is pulled on
    summary = experiment.run_experiment(cfg(tmp_path, embedded, rounds=1, collect_timeout_s=30, own_processes=True), ds=ds)
    r = summary["rounds"][0]
    assert r["participants"]["fl"] == ["pi-00", "pi-02"] and r["device_errors"] == {"pi-01": "offline"}
    assert r["sl_chain"]["pi-02"]["start"] == r["sl_chain"]["pi-00"]["end"]   # not pi-01's half-trained f_a
    assert r["device_values"]["pi-01"]["up"] == 2 * (32 * F + 32)              # its two batches were served


def test_the_client_refuses_a_gradient_it_did_not_ask_for():
    rng = np.random.default_rng(0)
    c = SplitClient(F_A, rng.random((40, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 40))
    c.begin({"seed": 1, "batch": 16, "lr": 0.1}, F_A.init(0))
    before = [p.copy() for p in c.params]
    with pytest.raises(SplitError, match="not the one in flight"):
        c.gradient(0, np.zeros((16, 14, 14, 64), np.float32))        # nothing sent yet
    b, ((smashed, _),), labels = c.smashed()
    with pytest.raises(SplitError, match="not the one in flight"):
        c.gradient(b + 1, np.zeros_like(smashed))
    with pytest.raises(SplitError, match="shape"):
        c.gradient(b, np.zeros((3, 14, 14, 64), np.float32))
    assert all(np.array_equal(p, q) for p, q in zip(before, c.params))   # refused: nothing changed
    c.gradient(b, np.ones_like(smashed))
    assert not all(np.array_equal(p, q) for p, q in zip(before, c.params))


def test_bad_smashed_data_is_rejected_over_the_broker(tmp_path, embedded):
    store = Store(str(tmp_path / "state.db"))
    link = HostLink(embedded, client_id=f"host-{time.monotonic_ns()}").connect()
    net = SPEC.network()
    session = Session(link, store)
    engine = session.handler = SplitRound(session, spec("sl"), net, SPEC.cut, SPEC.name, net.init(0), lambda p: (0.0, 0.0),
                                          lr=0.01, batch=4)
    dev, got = raw_device(embedded, ["pi-x"])
    send = lambda leaf, payload: dev.publish(wire.dev_topic("pi-x", leaf), payload, qos=1).wait_for_publish(10)
    send(wire.T_PRESENCE, b"online")
    session.begin(1)
    engine.active["pi-x"] = {"next": 0}
    task = session.task_id(1, "pi-x")

    def smashed(batch=0, n=4, dtype=np.float32, shape=(14, 14, 64), fill=0.5, task=task, labels=None):
        x = np.full((n,) + shape, fill, dtype)
        y = np.zeros(n, np.uint8) if labels is None else labels
        blob = wire.encode_blob({"kind": "smashed", "round": 1, "task": task, "device": "pi-x", "n": n, "batch": batch},
                                [to_wire(x), to_wire(y)])
        for chunk in wire.iter_chunks(wire.KIND_SMASHED, 1, blob, 65536):
            send(wire.T_UP, chunk)

    def expect(reason):
        rejected = session.rec.rejected
        assert session.pump(lambda: rejected[reason] > 0, 10), (reason, dict(rejected))
        rejected.clear()

    smashed(batch=1)
    expect("schema")                                   # not the batch in flight
    smashed(shape=(14, 14, 32))
    expect("shape")                                    # not the cut's shape
    smashed(dtype=np.float64)
    expect("shape")                                    # not the task's dtype
    smashed(n=5)
    expect("shape")                                    # more rows than the batch
    smashed(fill=np.nan)
    expect("nonfinite")
    smashed(labels=np.full(4, 10, np.uint8))
    expect("schema")                                   # a label outside the classes
    smashed(task=123)
    expect("replay")
    smashed()                                          # and a good one is answered with its gradient
    assert session.pump(lambda: engine.active["pi-x"]["next"] == 1, 10)
    kind, meta, (t,) = first_blob(got)
    grad = from_wire(t)
    assert kind == wire.KIND_GRAD and meta["batch"] == 0 and grad.shape == (4, 14, 14, 64)
    assert session.rec.rejected == {}
    dev.loop_stop()
    dev.disconnect()
    link.close()
    store.close()


def test_iotsl_generators_pretraining_and_imputation_over_the_broker(tmp_path, fashion, embedded):
    """Algorithm 1 on each virtual Pi (DP generator, artifact with its epsilon), the host's check and
    pre-training, Algorithm 2's pairing sent to the devices, then SL on local + generated data."""
    from semifl.learn.iotsl.impute import impute

    ds = small(fashion, 600)
    c = cfg(tmp_path, embedded, strategy="iotsl", partition="k-classes", k_classes=2, gen_steps=3, gen_dim=8,
            max_epsilon=50.0, pretrain_epochs=1)
    summary = experiment.run_experiment(c, ds=ds)
    first, second = summary["rounds"]
    assert first["rejected"] == {} and first["device_errors"] == {} and "generators" in first["phases_s"]
    assert set(first["generators"]) == {"pi-00", "pi-01", "pi-02"} and second["generators"] == {}
    assert all(0 < g["epsilon"] <= 50.0 and g["delta"] == 1e-5 for g in first["generators"].values())
    hists = {d: v["hist"] for d, v in summary["partition"]["devices"].items()}
    plan = impute(hists)
    assert first["imputed"] == {d: sum(f.quantity for f in fs) for d, fs in plan.items() if fs}
    chain = second["sl_chain"]   # sequential, like sl: each client starts from the f_a the previous one handed back
    assert chain["pi-01"]["start"] == chain["pi-00"]["end"] and chain["pi-02"]["start"] == chain["pi-01"]["end"]
    for dev, v in second["device_values"].items():   # every client trained on local + generated samples
        n = sum(hists[dev]) + first["imputed"][dev]
        assert v["up"] + v["down"] == comm_params(n, F, W) + W, dev
    store = Store(str(tmp_path / "run" / "state.db"))
    kept = store.artifacts("generator")   # versioned artifacts with their epsilon, kept past the round
    store.close()
    assert set(kept) == set(first["generators"])
    for d, a in kept.items():
        g = first["generators"][d]
        assert (a["version"], a["sha256"], len(a["blob"])) == (1, g["sha256"], g["bytes"]) and a["epsilon"] == g["epsilon"]


def test_iotsl_refuses_generators_over_the_privacy_policy(tmp_path, fashion, embedded):
    ds = small(fashion, 300)
    c = cfg(tmp_path, embedded, strategy="iotsl", rounds=1, partition="k-classes", k_classes=2, gen_steps=3,
            gen_dim=8, max_epsilon=0.01, pretrain_epochs=1)
    summary = experiment.run_experiment(c, ds=ds)
    r = summary["rounds"][0]
    assert r["rejected"] == {"privacy": 3} and r["generators"] == {} and r["imputed"] == {}
    assert r["participants"]["fl"] == ["pi-00", "pi-01", "pi-02"]   # and split learning goes on without them


def test_a_device_that_lost_its_generated_set_gets_its_paired_generators_again(tmp_path, embedded):
    """Generators are artifacts the host keeps: on request it sends a device the ones paired for it."""
    from semifl.learn.iotsl import artifact
    from semifl.learn.iotsl.train import train_generator

    rng = np.random.default_rng(0)
    tg = train_generator(rng.integers(0, 255, (16, 28, 28), dtype=np.uint8), np.repeat([3, 4], 8), steps=1, batch=8, dim=8)
    art = artifact.to_bytes(tg, "pi-y")
    store = Store(str(tmp_path / "state.db"))
    info = artifact.load(art, artifact.PrivacyPolicy(float("inf"), 1.0))[1]
    store.keep_artifact("pi-y", "generator", 1, info.sha256, info.epsilon, info.delta, art)
    link = HostLink(embedded, client_id=f"host-{time.monotonic_ns()}").connect()
    net = SPEC.network()
    session = Session(link, store)
    engine = session.handler = SplitRound(session, spec("iotsl"), net, SPEC.cut, SPEC.name, net.init(0),
                                          lambda p: (0.0, 0.0), lr=0.01)
    session.begin(2)
    engine.fills = {"pi-x": [[3, "pi-y", 5], [4, "pi-y", 6]]}
    dev, got = raw_device(embedded, ["pi-x", "pi-z"])
    for who in ("pi-x", "pi-z"):
        dev.publish(wire.dev_topic(who, wire.T_STATUS), wire.encode_json(
            {"v": 1, "kind": "request", "round": 2, "what": "generators"}), qos=1).wait_for_publish(10)
    assert session.pump(lambda: session.rec.rejected["unexpected"] == 1, 10)   # pi-z has nothing to ask for
    kind, meta, tensors = first_blob(got)
    assert kind == wire.KIND_GENERATOR and meta["kind"] == "impute" and meta["generators"] == ["pi-y"]
    assert meta["fills"] == [[3, "pi-y", 5], [4, "pi-y", 6]] and bytes(tensors[0][4]) == art
    assert engine.imputed == {"pi-x": 11}
    dev.loop_stop()
    dev.disconnect()
    link.close()
    store.close()


def test_the_default_split_settings_learn_on_two_classes_per_device(fashion):
    """`semifl run --strategy sl --cl-devices 0 --partition k-classes` as the README runs it, in-process:
    at the federated default step (--lr 0.1) the split CNN's ReLUs died within two rounds (the cut's
    gradient exactly 0, later devices handing back the f_a they started from, 10.00 %); the split
    section's own step keeps every device training and the model above chance."""
    ds = Dataset(fashion.name, fashion.x_train, fashion.y_train, fashion.x_test[:500], fashion.y_test[:500], fashion.classes)
    c = RunConfig.make(strategy="sl", cl_devices=0, partition="k-classes", rounds=3, plot=False, int8_every=0)
    assert c.lr == 0.1 and c.split.sl_lr < c.lr
    got = []
    run_inprocess(c, ds, got.append)
    for r in got:
        assert r["trained"] == [f"pi-{i:02d}" for i in range(6)]
        assert all(v["end"] != v["start"] for v in r["sl_chain"].values()), r["sl_chain"]
        assert all(v["up"] == 5 * 32 * (F + 1) + W for v in r["device_values"].values())   # sl_batches: 5 of 32, f_a
    assert got[-1]["accuracy"] > 0.3
