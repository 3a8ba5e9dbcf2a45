"""Every committed export (`semifl models export NAME`) meets the output contract and is one model:
the numpy engine's float accuracy on held-out data, int8 within a point of it in LiteRT, TFLite-Micro
reproducing its golden outputs and within 1 LSB of LiteRT's builtin kernels (per op; see below), the
smallest arena."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semifl.learn import har, nn
from semifl.learn.data import load_idx_dataset, to_float
from semifl.models import MODELS, get

REPO = Path(__file__).resolve().parents[1]
EXPORTED = sorted(n for n in MODELS if (REPO / "models" / n / f"{n}.tflite").exists())
HELD_OUT = 2000


def held_out(spec):
    if spec.dataset == "wisdm":
        if not Path(har.WISDM_DIR).is_dir():
            pytest.skip("../shared/data/wisdm-2019 not here")
        x, y = har.load_har().pooled("test")
        return (har.as_grid(x, spec.input_shape[0]) if len(spec.input_shape) == 3 else x), y
    if spec.dataset == "gaussian5":
        from semifl.models.export import gaussian5

        rng = np.random.default_rng(0)
        gaussian5(1000, rng)
        return gaussian5(1000, rng)
    root = REPO.parent / "shared" / "data" / "mnist" if spec.dataset == "mnist" else None
    if root is not None and not root.is_dir():
        pytest.skip("../shared/data/mnist not here")
    try:
        ds = load_idx_dataset(str(root) if root else None)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    return to_float(ds.x_test[:HELD_OUT]).reshape((-1,) + spec.input_shape), ds.y_test[:HELD_OUT]


def litert(tfl, x, xnnpack=True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=tfl) if xnnpack else Interpreter(
        model_content=tfl, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    i = it.get_input_details()[0]
    it.resize_tensor_input(i["index"], x.shape)
    it.allocate_tensors()
    scale, zp = i["quantization"]
    if x.dtype != np.int8:
        x = np.clip(np.round(x.astype(np.float32) / np.float32(scale)) + zp, -128, 127).astype(np.int8)
    it.set_tensor(i["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]), [op["op_name"] for op in it._get_ops_details()]


@pytest.fixture(scope="module", params=EXPORTED)
def export(request):
    d = REPO / "models" / request.param
    name = request.param
    return (get(name), json.loads((d / f"{name}.json").read_text()), (d / f"{name}.tflite").read_bytes(),
            np.load(d / f"{name}.golden.npz"), [np.load(d / f"{name}.fp32.npz")[f"arr_{i}"] for i in
                                                 range(len(get(name).network().shapes()))])


def test_the_contract_files_and_card(export):
    spec, card, tfl, _, params = export
    d = REPO / "models" / spec.name
    assert {"fp32_accuracy", "int8_accuracy", "arena_bytes", "size_bytes", "dataset"} <= set(card)
    assert card["size_bytes"] == len(tfl) and card["params"] == spec.network().n_params
    assert f"{spec.name.replace('-', '_')}_int8_len = {len(tfl)};" in (d / f"{spec.name}.h").read_text()
    assert (REPO / "models" / "cards" / f"{spec.name}.md").read_text() == (d / f"{spec.name}.md").read_text()
    assert [p.shape for p in params] == spec.network().shapes()
    assert card["keras_vs_numpy_max_abs_logit"] < 1e-3   # Keras and the numpy engine are one model


def test_int8_within_a_point_of_float_on_held_out_data(export):
    spec, card, tfl, _, params = export
    x, y = held_out(spec)
    fp32 = (spec.network().predict(params, x) == y).mean()
    out, _ = litert(tfl, x)
    int8 = (out.argmax(1) == y).mean()
    assert int8 >= fp32 - 0.01, (spec.name, fp32, int8)
    assert litert(tfl, x[:1], xnnpack=False)[1] == card["ops"] and fp32 > 0.5


def test_tflm_reproduces_the_golden_outputs_within_1_lsb_of_litert(export):
    from tflite_micro import runtime

    spec, card, tfl, golden, _ = export
    it = runtime.Interpreter.from_bytes(tfl, arena_size=card["arena_bytes"])
    micro = []
    for row in golden["x_int8"]:
        it.set_input(row[None], 0)
        it.invoke()
        micro.append(it.get_output(0)[0].copy())
    micro = np.stack(micro)
    assert np.array_equal(micro, golden["tflm"])
    builtin, _ = litert(tfl, golden["x_int8"], xnnpack=False)
    # each op's requantization rounds once (LiteRT) or twice (TFLite-Micro): 1 LSB per op, which a
    # deep graph (mlp-seed001's six sigmoid layers) can carry to 2 at the logits, rarely
    d = np.abs(micro.astype(int) - builtin.astype(int))
    assert (d <= 1).mean() >= 0.99 and d.max() <= 2
    assert np.array_equal(litert(tfl, golden["x_int8"])[0], golden["litert"])
    assert (micro.argmax(1) == builtin.argmax(1)).mean() >= 0.98


def test_the_recorded_arena_is_the_smallest_that_allocates(export, tmp_path):
    spec, card, tfl, _, _ = export
    path = tmp_path / "m.tflite"
    path.write_bytes(tfl)
    probe = ("import sys; from tflite_micro import runtime; "
             "runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size=int(sys.argv[2]))")
    fits = lambda n: subprocess.run([sys.executable, "-c", probe, str(path), str(n)], capture_output=True).returncode == 0
    assert fits(card["arena_bytes"]) and not fits(card["arena_bytes"] - 256)   # a short arena may even crash TFLM


def test_split_model_device_part_is_iotsls():
    spec = get("splitcnn-mnist")
    f_a, f_b = spec.network().split(spec.cut)
    assert f_a.n_params == 37_568 and f_a.out_shapes[-1] == (14, 14, 64)
    assert f_b.input_shape == (14, 14, 64) and f_b.out_shapes[-1] == (10,)
    assert nn.Net(spec.input_shape, spec.net).n_params == f_a.n_params + f_b.n_params
