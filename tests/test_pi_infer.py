"""The Pi agent's int8 inference with LiteRT on the exported model: the same classes LiteRT gave at
export, and the agent reports its on-device accuracy as an eval status."""
from pathlib import Path

import numpy as np

from semifl.protocol import wire
from semifl_agent.agent import PiAgent
from semifl_agent.infer import LiteRTClassifier

MODEL = Path(__file__).resolve().parents[1] / "models" / "mlp-fmnist"


def test_litert_classifier_reproduces_the_export():
    g = np.load(MODEL / "mlp-fmnist.golden.npz")
    clf = LiteRTClassifier(MODEL / "mlp-fmnist.tflite")
    assert np.array_equal(clf.quantize(g["pixels"].reshape(len(g["pixels"]), -1)), g["x_int8"])
    assert np.array_equal(clf.logits(g["pixels"]), g["litert"])


def test_agent_reports_the_exported_models_accuracy(fashion):
    idx = np.flatnonzero(fashion.y_test == 1)[:100]
    cfg = {"id": "pi-t", "broker": "mqtt://127.0.0.1:1", "tflite": str(MODEL / "mlp-fmnist.tflite"), "eval_n": 50}
    agent = PiAgent(cfg, fashion.x_test[idx], fashion.y_test[idx])
    sent = []
    agent.device._publish = lambda topic, payload, retain=False: sent.append((topic, payload))
    agent.infer.evaluate()
    (topic, payload), = sent
    msg = wire.decode_json(payload)
    assert topic == wire.dev_topic("pi-t", wire.T_STATUS) and msg["kind"] == "eval" and msg["n"] == 50
    assert msg["accuracy"] > 0.9   # trousers: the exported model gets nearly all of them
