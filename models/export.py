"""int8 export with TensorFlow's converter, validated in TFLite-Micro and LiteRT: `semifl models export`.

Needs TensorFlow (`pip install -e .[export]`); the host, the devices and the tests do not. Writes, for
model NAME into DIR: NAME.tflite (full-integer: int8 input, int8 logits), NAME.h (a C array for
TFLite-Micro firmware), NAME.json (the card's numbers), NAME.md (the card), and NAME.golden.npz (test
inputs with LiteRT's and TFLite-Micro's int8 outputs, which tests hold every runtime to), and with no
--params the float model it trained, NAME.fp32.npz. The output is the logits: softmax is monotonic, a
device needs only the argmax, and leaving it out keeps the graph to FULLY_CONNECTED and TANH.

It writes nothing outside DIR. The repository's committed exports are models/NAME/ and their cards
models/cards/NAME.md, a copy of NAME.md (tests/test_models.py holds them equal): to refresh one, export
with `--out models/NAME --overwrite` and copy the card.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from semifl.learn import har, int8, nn
from semifl.learn.data import load_dataset, load_idx_dataset, to_float

from . import get

CALIBRATION = 1000   # representative samples from the training set, seeded
GOLDEN = 64          # test inputs whose int8 outputs every runtime must reproduce


def train(net: nn.Net, x: np.ndarray, y: np.ndarray, epochs: int = 8, batch: int = 128, lr: float = 0.05,
          momentum: float = 0.9, seed: int = 0) -> list[np.ndarray]:
    """Centralized (minibatch or, batch=0, full-batch) SGD with momentum: the reference float model."""
    return nn.sgd(net, net.init(seed), x, y, epochs=epochs, batch=batch, lr=lr, momentum=momentum, seed=seed)


def gaussian5(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001's data: 5 features ~ N(-1, 1) (class 0) or N(+1, 1) (class 1)."""
    y = rng.integers(0, 2, n)
    return (rng.normal(0, 1, (n, 5)) + np.where(y[:, None] == 1, 1.0, -1.0)).astype(np.float32), y


MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def model_data(spec, data: str | None):
    """-> (name, float x_train, y_train, float x_test, y_test, raw test inputs kept in the golden file,
    extra card fields), the x shaped as the model's input."""
    shape = (-1,) + spec.input_shape
    if spec.dataset == "gaussian5":
        rng = np.random.default_rng(0)
        (xtr, ytr), (xte, yte) = gaussian5(1000, rng), gaussian5(1000, rng)
        return "gaussian5", xtr, ytr, xte, yte, xte, {}
    if spec.dataset == "wisdm":
        d = har.load_har(data)
        (xtr, ytr), (xte, yte) = d.pooled("train"), d.pooled("test")
        if len(spec.input_shape) == 3:
            xtr, xte = har.as_grid(xtr, spec.input_shape[0]), har.as_grid(xte, spec.input_shape[0])
        extra = {"classes": d.classes, "subjects": len(d.subjects),
                 "input_mean": [round(float(v), 6) for v in d.mean], "input_std": [round(float(v), 6) for v in d.std]}
        return d.name, xtr, ytr, xte, yte, xte, extra
    ds = load_idx_dataset(data or str(MNIST_DIR), "mnist") if spec.dataset == "mnist" else load_dataset(data)
    return (ds.name, to_float(ds.x_train).reshape(shape), ds.y_train, to_float(ds.x_test).reshape(shape), ds.y_test,
            ds.x_test, {})


def keras_model(spec):
    import tensorflow as tf

    L = tf.keras.layers
    act = {"none": None}
    layers = [tf.keras.Input(spec.input_shape)]
    net = spec.network()
    for i, d in enumerate(spec.net):
        if d[0] == "dense":
            layers.append(L.Dense(d[1], activation=act.get(d[2], d[2])))
        elif d[0] == "conv":
            layers.append(L.Conv2D(d[1], 3, padding="same", activation=act.get(d[2], d[2])))
        elif d[0] == "pool":
            layers.append(L.MaxPooling2D())
        else:   # one RESHAPE to [-1, n]: Flatten's shape math would add SHAPE/STRIDED_SLICE/PACK ops
            n = net.out_shapes[i][0]
            layers.append(L.Lambda(lambda x, n=n: tf.reshape(x, [-1, n]), output_shape=(n,)))
    return tf.keras.Sequential(layers)


NEEDS = {"tensorflow": "export", "ai_edge_litert": "export", "tflite_micro": "export"}   # module -> extra


def missing_modules() -> list[str]:
    """What export needs and cannot import, checked before anything trains."""
    import importlib.util

    return [m for m in NEEDS if importlib.util.find_spec(m) is None]


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ (TF, absl, glog) and Python logs off the terminal; set before it loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def native_output_captured():
    """Redirect the process's stdout and stderr file descriptors (what C++ code writes: the converter's
    MLIR passes, absl's pre-init notice, LiteRT's delegate INFO lines) to a temporary file; replayed to
    stderr only when the block fails, so a failure still shows its cause."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            log.seek(0)
            sys.stderr.write(log.read()[-8000:].decode(errors="replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def convert(spec, params, calib_x: np.ndarray, check_x: np.ndarray) -> tuple[bytes, float]:
    """-> (full-integer .tflite, max |Keras logits - nn logits| on check_x: one definition, two engines)."""
    quiet_tensorflow()
    try:
        import tensorflow as tf
    except ImportError as e:
        raise SystemExit("semifl models export needs TensorFlow: pip install -e .[export]") from e
    tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    model = keras_model(spec)
    model.set_weights(params)
    drift = float(np.abs(model(check_x).numpy() - spec.network().forward(params, check_x)).max())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib_x[i:i + 1]] for i in range(len(calib_x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert(), drift


def ops(tfl: bytes) -> list[str]:
    """The builtin ops the int8 graph uses, in execution order: what a runtime must have."""
    from ai_edge_litert.interpreter import Interpreter

    return [op["op_name"] for op in Interpreter(model_content=tfl)._get_ops_details()]


def quantize_scale(tfl: bytes) -> tuple[float, int]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=tfl).get_input_details()[0]["quantization"]


def quantize_input(tfl: bytes, x: np.ndarray) -> np.ndarray:
    """Float inputs -> int8 with the model's input scale and zero point (round half to even, as numpy)."""
    scale, zp = quantize_scale(tfl)
    return np.clip(np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp, -128, 127).astype(np.int8)


def run_litert(tfl: bytes, x_int8: np.ndarray, xnnpack: bool = True) -> np.ndarray:
    """LiteRT's int8 outputs; xnnpack=False: its builtin kernels (XNNPACK, the default on a Pi, rounds
    convolutions differently and drifts up to 2 LSB from TFLite-Micro over several conv layers)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=tfl) if xnnpack else Interpreter(
        model_content=tfl, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x_int8.shape)
    it.allocate_tensors()
    it.set_tensor(inp, x_int8)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


_PROBE = """
import sys
from tflite_micro import runtime
runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
"""


def tflm_arena(tfl: bytes) -> int:
    """The smallest arena (to 256 bytes) TFLite-Micro allocates this model in. Each size is tried in a
    child process: some short arenas crash TFLite-Micro's allocator (per-channel quantization of a
    400-unit layer segfaults at 4 kB) rather than raise."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(tfl)
        f.flush()

        def fits(size):
            return subprocess.run([sys.executable, "-c", _PROBE, f.name, str(size)], capture_output=True).returncode == 0

        lo, hi = 256, 1 << 20
        while not fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 256:
            mid = (lo + hi) // 2 // 256 * 256
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def run_tflm(tfl: bytes, x_int8: np.ndarray, arena: int) -> np.ndarray:
    from tflite_micro import runtime

    it = runtime.Interpreter.from_bytes(tfl, arena_size=arena)
    out = []
    for row in x_int8:
        it.set_input(row[None], 0)
        it.invoke()
        out.append(it.get_output(0)[0].copy())
    return np.stack(out)


def c_array(tfl: bytes, symbol: str) -> str:
    body = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in tfl[i:i + 12]) for i in range(0, len(tfl), 12))
    return (f"// {symbol}: int8 model generated by `semifl models export`; TFLite-Micro wants it 16-byte aligned.\n"
            f"#include <stdint.h>\nalignas(16) const uint8_t {symbol}[] = {{\n{body}\n}};\n"
            f"const unsigned int {symbol}_len = {len(tfl)};\n")


def card_md(card: dict) -> str:
    big = ("layers", "ops", "classes", "input_mean", "input_std", "net")
    rows = "\n".join(f"| {k} | {v} |" for k, v in card.items() if k not in big)
    cut = (f" Split learning: the device runs the first {card['cut']} layers ({card['device_params']:,} parameters), "
           f"the host the rest." if card.get("cut") else "")
    extra = (" The input's mean and standard deviation per feature are in the card's JSON (`input_mean`, "
             "`input_std`)." if "input_mean" in card else "")
    return (f"# Model card: {card['name']}\n\nGenerated by `semifl models export {card['name']}`; do not edit.\n\n"
            f"{card['architecture']}; linear logits ({card['source']}).{cut} Input: {card['input']}, quantized with the "
            f"model's input scale and zero point.{extra} int8 graph: {', '.join(dict.fromkeys(card['ops']))}; output "
            f"int8 logits (argmax = class).\n\n| field | value |\n|---|---|\n{rows}\n\n"
            "Runtimes: TFLite-Micro (C firmware: the `.h`), LiteRT (Pi)" + (
                ", the MicroPython node's kernel (`firmware/micropython/semifl_node/int8.py`, bit-exact with "
                "TFLite-Micro) and `semifl.learn.int8` on the host (bit-exact with TFLite-Micro or, rounding once, "
                "with LiteRT)" if card.get("host_double_rounding_equals_tflm") is not None else "") + ".\n")


def export(name: str, out: Path, params_path: str | None = None, data: str | None = None) -> dict:
    """Writes the export into `out` (and nowhere else); -> the card."""
    spec = get(name)
    net = spec.network()
    out.mkdir(parents=True, exist_ok=True)
    ds_name, x_train, y_train, x_test, y_test, raw_test, extra = model_data(spec, data)
    if params_path:
        npz = np.load(params_path)
        params = [npz[f"arr_{i}"].astype(np.float32) for i in range(len(npz.files))]
        if [p.shape for p in params] != net.shapes():
            raise SystemExit(f"{params_path}: shapes {[p.shape for p in params]} are not {name}'s {net.shapes()}")
        source = str(params_path)
    else:
        params = train(net, x_train, y_train, **spec.train)
        np.savez(out / f"{name}.fp32.npz", *params)
        source = f"trained by semifl models export ({spec.train}) -> {name}.fp32.npz"
    rng = np.random.default_rng(0)
    calib = x_train[rng.choice(len(y_train), min(CALIBRATION, len(y_train)), replace=False)]
    tfl, drift = convert(spec, params, calib, x_test[:GOLDEN])
    (out / f"{name}.tflite").write_bytes(tfl)
    (out / f"{name}.h").write_text(c_array(tfl, name.replace("-", "_") + "_int8"))

    in_scale, in_zp = quantize_scale(tfl)
    x_q = quantize_input(tfl, x_test)
    lite = run_litert(tfl, x_q)
    arena = tflm_arena(tfl)
    micro = run_tflm(tfl, x_q[:GOLDEN], arena)
    builtin = run_litert(tfl, x_q[:GOLDEN], xnnpack=False)
    f_a = net.split(spec.cut)[0] if spec.cut else None
    card = {
        "name": name, "architecture": spec.describe().split(": ", 1)[1].rsplit(";", 1)[0], "source": spec.source,
        "input": spec.input, "params": net.n_params, "weights": source, "dataset": ds_name,
        "calibration_samples": len(calib), "size_bytes": len(tfl), "arena_bytes": arena, "ops": ops(tfl),
        "input_scale": float(in_scale), "input_zero_point": int(in_zp),
        "fp32_accuracy": float((net.predict(params, x_test) == y_test).mean()),
        "int8_accuracy": float((lite.argmax(1) == y_test).mean()),
        "max_lsb_tflm_vs_litert": int(np.abs(micro.astype(int) - builtin.astype(int)).max()),
        "max_lsb_tflm_vs_litert_xnnpack": int(np.abs(micro.astype(int) - lite[:GOLDEN].astype(int)).max()),
        "keras_vs_numpy_max_abs_logit": drift,
    }
    if spec.cut:
        card.update(cut=spec.cut, device_params=f_a.n_params, smashed_shape=list(f_a.out_shapes[-1]))
    if spec.is_mlp:   # the host's int8 reference (and the MCU node's kernel) run dense graphs
        model = int8.from_tflite(tfl)
        ours = model.forward(x_q)
        card.update({
            "int8_accuracy_tflm_rounding": float((ours.argmax(1) == y_test).mean()),
            "argmax_agreement_tflm_vs_litert": float((ours.argmax(1) == lite.argmax(1)).mean()),
            "host_single_rounding_equals_litert": bool(np.array_equal(model.forward(x_q, "single"), lite)),
            "host_double_rounding_equals_tflm": bool(np.array_equal(ours[:GOLDEN], micro))})
    card.update(extra)
    raw = {"pixels" if raw_test.dtype == np.uint8 else "x_float": raw_test[:GOLDEN]}
    np.savez(out / f"{name}.golden.npz", labels=y_test[:GOLDEN], x_int8=x_q[:GOLDEN], litert=lite[:GOLDEN],
             litert_builtin=builtin, tflm=micro, **raw)
    (out / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / f"{name}.md").write_text(card_md(card))
    return card
