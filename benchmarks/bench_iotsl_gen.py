"""IoTSL's generators on MNIST, the seed's extreme non-IID split (section V-F): 5 devices, 2 classes
each, at most 1200 images per class (`per_class`; ../shared/data/mnist holds the first 10,000 training
images, 863-1127 per class, so each device gets all of its two classes: `n` per device). One DP conditional WGAN-GP per device (Algorithm 1, `semifl.learn.iotsl`),
each reported with its (epsilon, delta) from dp-accounting; then the standard GAN quality proxy, which
is also IoTSL's pre-training (Fig. 13a): the split CNN trained on the generated set D (each generator
makes its device's class counts) and tested on the real MNIST test set, beside the same CNN trained on
the same amount of real data. A few minutes of one CPU thread, so the generators are smaller and far
shorter-trained than the seed's (GPU) ones.

    python benchmarks/bench_iotsl_gen.py [--data ../shared/data/mnist] [--steps 375] [--dim 32]

Writes benchmarks/results/iotsl_generators.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np   # noqa: E402

from semifl.learn import nn   # noqa: E402
from semifl.learn.data import load_idx_dataset, to_float   # noqa: E402
from semifl.learn.iotsl import artifact   # noqa: E402
from semifl.learn.iotsl.pretrain import generated_dataset, pretrain   # noqa: E402
from semifl.learn.iotsl.train import train_generator   # noqa: E402
from semifl.models import get   # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "mnist"

SPLIT = get("splitcnn-mnist")   # IoTSL's split CNN and its cut


def accuracy(net, params, x, y) -> float:
    return float((net.predict(params, x) == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--steps", type=int, default=375, help="generator steps per device")
    ap.add_argument("--dim", type=int, default=32, help="generator/discriminator width (the seed: 64)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-critic", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--per-class", type=int, default=1200, help="at most this many images per class")
    ap.add_argument("--epochs", type=int, default=1, help="classifier epochs")
    ap.add_argument("--out", default=str(HERE / "results" / "iotsl_generators.json"))
    a = ap.parse_args(argv)

    ds = load_idx_dataset(a.data, name="mnist")
    x_test, y_test = to_float(ds.x_test).reshape(-1, 28, 28, 1), ds.y_test.astype(np.int64)
    devices = [[2 * i, 2 * i + 1] for i in range(5)]
    gens, rows, real_idx = [], [], []
    for i, classes in enumerate(devices):
        idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:a.per_class] for c in classes])
        real_idx.append(idx)
        tg = train_generator(ds.x_train[idx], ds.y_train[idx], steps=a.steps, batch=a.batch, n_critic=a.n_critic,
                             sigma=a.sigma, lr=a.lr, dim=a.dim, seed=i, log_every=max(1, a.steps // 5))
        blob = artifact.to_bytes(tg, f"D{i + 1}")
        gen, info = artifact.load(blob, artifact.PrivacyPolicy(max_epsilon=10.0), device=f"D{i + 1}")
        gens.append((gen, list(info.histogram)))
        rows.append({"device": f"D{i + 1}", "classes": classes, "n": int(len(idx)), "epsilon": tg.epsilon,
                     "delta": tg.delta, "sigma": tg.sigma, "q": tg.q, "steps": tg.steps,
                     "seconds": round(tg.seconds, 1), "artifact_bytes": len(blob), "sha256": info.sha256,
                     "losses": tg.history})
        print(f"D{i + 1} {classes}: epsilon {tg.epsilon:.2f} (delta {tg.delta}), {tg.steps} steps in {tg.seconds:.0f} s",
              flush=True)

    net = SPLIT.network()
    x_gen, y_gen, _ = generated_dataset(gens, seed=0)
    t0 = time.perf_counter()
    theta_pre, _ = pretrain(x_gen, y_gen, net, cut=SPLIT.cut, epochs=a.epochs, batch=64, lr=0.05, momentum=0.9)
    t_gen = time.perf_counter() - t0
    acc_gen = accuracy(net, theta_pre, x_test, y_test)
    print(f"split CNN on generated data: {acc_gen:.4f} on real test ({t_gen:.0f} s)", flush=True)
    idx = np.concatenate(real_idx)
    x_real = to_float(ds.x_train[idx]).reshape(-1, 28, 28, 1)
    t0 = time.perf_counter()
    theta_real = nn.sgd(net, net.init(0), x_real, ds.y_train[idx].astype(np.int64), epochs=a.epochs, batch=64,
                        lr=0.05, momentum=0.9)
    t_real = time.perf_counter() - t0
    acc_real = accuracy(net, theta_real, x_test, y_test)
    print(f"split CNN on the same amount of real data: {acc_real:.4f} ({t_real:.0f} s)", flush=True)

    out = {
        "dataset": "mnist", "devices": devices, "per_class": a.per_class,
        "generator": {"dim": a.dim, "z": "10-D Bernoulli + one-hot label", "batch": a.batch, "n_critic": a.n_critic,
                      "lr": a.lr, "gp_lambda": 10.0, "clip": 1.0, "sigma": a.sigma, "steps": a.steps,
                      "accountant": "dp-accounting RDP, Poisson-subsampled Gaussian, q = batch / n"},
        "generators": rows, "epsilon": [r["epsilon"] for r in rows], "delta": rows[0]["delta"],
        "classifier": {"model": "splitcnn-mnist (nn engine)", "epochs": a.epochs, "train_n": int(len(y_gen)),
                       "acc_generated_to_real": acc_gen, "acc_real_to_real": acc_real,
                       "seconds_generated": round(t_gen, 1), "seconds_real": round(t_real, 1),
                       "seed_fig13a_mnist": {"with_dp": 0.9474, "without_dp": 0.9823}},
        "seconds_total_generators": round(sum(r["seconds"] for r in rows), 1),
        "machine": f"{platform.processor() or platform.machine()}, 1 thread (torch.set_num_threads(1))",
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
