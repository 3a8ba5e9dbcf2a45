"""int8 export with TensorFlow's converter, validated in TFLite-Micro and LiteRT: `semifl models export`.

Needs TensorFlow (`pip install -e .[export]`); the host, the devices and the tests do not. Writes, for
model NAME into DIR: NAME.tflite (full-integer: int8 input, int8 logits), NAME.h (a C array for
TFLite-Micro firmware), NAME.json (the card's numbers), NAME.md (the card), and NAME.golden.npz (test
inputs with LiteRT's and TFLite-Micro's int8 outputs, which tests hold every runtime to), and with no
--params the float model it trained, NAME.fp32.npz. The output is the logits: softmax is monotonic, a
device needs only the argmax, and leaving it out keeps the graph to FULLY_CONNECTED and TANH.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semifl.learn import int8, mlp
from semifl.learn.data import load_dataset, to_float

from . import get

CALIBRATION = 1000   # representative samples from the training set, seeded
GOLDEN = 64          # test inputs whose int8 outputs every runtime must reproduce


def train(layers, x: np.ndarray, y: np.ndarray, hidden: str = "tanh", epochs: int = 8, batch: int = 128,
          lr: float = 0.05, momentum: float = 0.9, seed: int = 0) -> list[np.ndarray]:
    """Centralized (minibatch or, batch=0, full-batch) SGD with momentum: the reference float model."""
    params = mlp.init_params(layers, seed=seed)
    vel = [np.zeros_like(p) for p in params]
    rng = np.random.default_rng(seed)
    y = y.astype(np.int64)
    batch = batch or len(y)
    for _ in range(epochs):
        order = rng.permutation(len(y)) if batch < len(y) else np.arange(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            _, g = mlp.loss_and_grad(params, x[idx], y[idx], hidden)
            for k in range(len(params)):
                vel[k] = np.float32(momentum) * vel[k] - np.float32(lr) * g[k]
                params[k] = params[k] + vel[k]
    return params


def gaussian5(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001's data: 5 features ~ N(-1, 1) (class 0) or N(+1, 1) (class 1)."""
    y = rng.integers(0, 2, n)
    return (rng.normal(0, 1, (n, 5)) + np.where(y[:, None] == 1, 1.0, -1.0)).astype(np.float32), y


def model_data(dataset: str, data: str | None):
    """-> (name, float x_train, y_train, float x_test, y_test, raw test inputs kept in the golden file)."""
    if dataset == "gaussian5":
        rng = np.random.default_rng(0)
        (xtr, ytr), (xte, yte) = gaussian5(1000, rng), gaussian5(1000, rng)
        return "gaussian5", xtr, ytr, xte, yte, xte
    ds = load_dataset(data)
    return ds.name, to_float(ds.x_train), ds.y_train, to_float(ds.x_test), ds.y_test, ds.x_test


def keras_model(params, hidden: str):
    import tensorflow as tf

    n = len(params) // 2
    model = tf.keras.Sequential([tf.keras.Input((params[0].shape[0],))] + [
        tf.keras.layers.Dense(params[2 * i].shape[1], activation=hidden if i < n - 1 else None) for i in range(n)])
    model.set_weights(params)
    return model


def convert(params, hidden: str, calib_x: np.ndarray) -> bytes:
    try:
        import tensorflow as tf
    except ImportError as e:
        raise SystemExit("semifl models export needs TensorFlow: pip install -e .[export]") from e
    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model(params, hidden))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib_x[i:i + 1]] for i in range(len(calib_x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def run_litert(tfl: bytes, x_int8: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tfl)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x_int8.shape)
    it.allocate_tensors()
    it.set_tensor(inp, x_int8)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def tflm_arena(tfl: bytes) -> int:
    """The smallest arena (to 256 bytes) TFLite-Micro allocates this model in."""
    from tflite_micro import runtime

    lo, hi = 256, 1 << 20
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        try:
            runtime.Interpreter.from_bytes(tfl, arena_size=mid)
            hi = mid
        except Exception:   # tflite_micro raises a bare RuntimeError when the arena is short
            lo = mid
    return hi


def run_tflm(tfl: bytes, x_int8: np.ndarray, arena: int) -> np.ndarray:
    from tflite_micro import runtime

    it = runtime.Interpreter.from_bytes(tfl, arena_size=arena)
    out = []
    for row in x_int8:
        it.set_input(row[None, :], 0)
        it.invoke()
        out.append(it.get_output(0)[0].copy())
    return np.stack(out)


def c_array(tfl: bytes, symbol: str) -> str:
    body = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in tfl[i:i + 12]) for i in range(0, len(tfl), 12))
    return (f"// {symbol}: int8 model generated by `semifl models export`; TFLite-Micro wants it 16-byte aligned.\n"
            f"#include <stdint.h>\nalignas(16) const uint8_t {symbol}[] = {{\n{body}\n}};\n"
            f"const unsigned int {symbol}_len = {len(tfl)};\n")


def card_md(card: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in card.items() if k not in ("layers", "ops"))
    return (f"# Model card: {card['name']}\n\nGenerated by `semifl models export {card['name']}`; do not edit.\n\n"
            f"MLP {'-'.join(map(str, card['layers']))}, {card['hidden']} hidden layers, linear logits. Input: "
            f"{card['input']}, quantized with the model's input scale and zero point. int8 graph: "
            f"{', '.join(card['ops'])}; output int8 logits (argmax = class).\n\n| field | value |\n|---|---|\n{rows}\n\n"
            "Runtimes: TFLite-Micro (C firmware: the `.h`), LiteRT (Pi), the MicroPython node's kernel "
            "(`firmware/micropython/semifl_node/int8.py`, bit-exact with TFLite-Micro) and `semifl.learn.int8` on "
            "the host (bit-exact with TFLite-Micro or, rounding once, with LiteRT).\n")


def export(name: str, out: Path, params_path: str | None = None, data: str | None = None, cards: Path | None = None) -> dict:
    spec = get(name)
    out.mkdir(parents=True, exist_ok=True)
    ds_name, x_train, y_train, x_test, y_test, raw_test = model_data(spec.dataset, data)
    if params_path:
        npz = np.load(params_path)
        params = [npz[f"arr_{i}"].astype(np.float32) for i in range(len(npz.files))]
        source = str(params_path)
    else:
        params = train(spec.layers, x_train, y_train, spec.hidden, **spec.train)
        np.savez(out / f"{name}.fp32.npz", *params)
        source = f"trained by semifl models export ({spec.train}) -> {name}.fp32.npz"
    rng = np.random.default_rng(0)
    calib = x_train[rng.choice(len(y_train), min(CALIBRATION, len(y_train)), replace=False)]
    tfl = convert(params, spec.hidden, calib)
    (out / f"{name}.tflite").write_bytes(tfl)
    (out / f"{name}.h").write_text(c_array(tfl, name.replace("-", "_") + "_int8"))

    model = int8.from_tflite(tfl)
    x_q = model.quantize_float(x_test)
    lite = run_litert(tfl, x_q)
    arena = tflm_arena(tfl)
    micro = run_tflm(tfl, x_q[:GOLDEN], arena)
    ours = model.forward(x_q)
    card = {
        "name": name, "layers": list(spec.layers), "hidden": spec.hidden, "input": spec.input,
        "params": int(sum(p.size for p in params)), "source": source, "dataset": ds_name,
        "calibration_samples": len(calib), "size_bytes": len(tfl), "arena_bytes": arena,
        "ops": ["FULLY_CONNECTED"] * len(model.layers) + [int8.ACTS[L.act][1] for L in model.layers if L.act != "none"],
        "input_scale": model.input_params[0], "input_zero_point": model.input_params[1],
        "fp32_accuracy": float((mlp.predict(params, x_test, spec.hidden) == y_test).mean()),
        "int8_accuracy": float((lite.argmax(1) == y_test).mean()),
        "int8_accuracy_tflm_rounding": float((ours.argmax(1) == y_test).mean()),
        "max_lsb_tflm_vs_litert": int(np.abs(ours.astype(int) - lite.astype(int)).max()),
        "argmax_agreement_tflm_vs_litert": float((ours.argmax(1) == lite.argmax(1)).mean()),
        "host_single_rounding_equals_litert": bool(np.array_equal(model.forward(x_q, "single"), lite)),
        "host_double_rounding_equals_tflm": bool(np.array_equal(ours[:GOLDEN], micro)),
    }
    raw = {"pixels" if raw_test.dtype == np.uint8 else "x_float": raw_test[:GOLDEN]}
    np.savez(out / f"{name}.golden.npz", labels=y_test[:GOLDEN], x_int8=x_q[:GOLDEN], litert=lite[:GOLDEN], tflm=micro, **raw)
    (out / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / f"{name}.md").write_text(card_md(card))
    if cards is not None:
        cards.mkdir(parents=True, exist_ok=True)
        (cards / f"{name}.md").write_text(card_md(card))
    return card
