"""Weight clustering: semifl's numpy k-means (learn/compress.py, what the host applies each round to
derive a device's copy) against tensorflow-model-optimization's `cluster_weights` (LINEAR init, then
stripped, no fine-tuning: the same one-shot use) on the trained mlp-fmnist, for k = 4, 8, 16, 32.

Run in the export venv with tfmot and tf-keras (`pip install tensorflow-model-optimization tf-keras`):
  TF_USE_LEGACY_KERAS=1 .venv-export/bin/python benchmarks/bench_clustering_tfmot.py
Writes benchmarks/results/clustering_tfmot.json.
"""
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # tfmot clusters Keras 2 (tf-keras) models
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main():
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from semifl.learn import compress, mlp
    from semifl.learn.data import load_idx_dataset, to_float

    npz = np.load(REPO / "models" / "mlp-fmnist" / "mlp-fmnist.fp32.npz")
    params = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    ds = load_idx_dataset(None)
    x, y = to_float(ds.x_test), ds.y_test
    acc = lambda p: float((mlp.predict(p, x) == y).mean())
    rows = []
    for k in (4, 8, 16, 32):
        model = keras.Sequential([keras.layers.Dense(params[i].shape[1], activation="tanh" if i < 6 else None,
                                                     input_shape=(params[i].shape[0],)) for i in range(0, 8, 2)])
        model.set_weights(params)
        t0 = time.perf_counter()
        clustered = tfmot.clustering.keras.cluster_weights(
            model, number_of_clusters=k, cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR)
        tf_params = [np.asarray(w, np.float32) for w in tfmot.clustering.keras.strip_clustering(clustered).get_weights()]
        t_tf = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = [compress.cluster(p, k) if p.ndim == 2 else p for p in params]
        t_ours = time.perf_counter() - t0
        mse = lambda q: float(np.mean([np.mean((a - b) ** 2) for a, b in zip(q[::2], params[::2])]))
        rows.append({"k": k, "tfmot": {"accuracy": acc(tf_params), "weight_mse": mse(tf_params), "seconds": round(t_tf, 3),
                                        "distinct_per_matrix": [int(np.unique(w).size) for w in tf_params[::2]]},
                     "semifl": {"accuracy": acc(ours), "weight_mse": mse(ours), "seconds": round(t_ours, 3),
                                "distinct_per_matrix": [int(np.unique(w).size) for w in ours[::2]]}})
        print(rows[-1])
    out = {"model": "mlp-fmnist", "float_accuracy": acc(params), "dataset": ds.name, "tfmot": tfmot.__version__,
           "note": "one-shot clustering of every weight matrix (biases kept), no fine-tuning", "rows": rows}
    (REPO / "benchmarks" / "results" / "clustering_tfmot.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
