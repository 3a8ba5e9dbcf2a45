"""The seed's FL baseline workload on Flower 1.41's Simulation Runtime (Ray backend).

Workload (identical arithmetic to semifl: semifl.learn.mlp / data / protocol.sampling):
  6 clients; client k holds every Fashion-MNIST training sample of class k (6,000 each);
  MLP 784-50-100-50-10 (tanh, softmax, cross-entropy), init_params(seed);
  per round each client takes ONE full-batch gradient step (lr 0.1) from the global params on
  select(n, ceil(0.3 n), (round*1000003 + k*7919 + 1) & 0xFFFFFFFF) of its samples;
  FedAvg weighted by samples used (Flower's own FedAvg, fraction_fit=1.0, min 6 clients);
  centralized evaluation on the 10,000 test images after every round.

Run with the Flower venv (see benchmarks/setup_flower.sh):
  .venv-flwr/bin/python benchmarks/flower_fl_baseline.py --rounds 200 --out benchmarks/results/flower_probe.json

API: the legacy-compatible `ServerApp(server_fn=...)` + `ClientApp(client_fn=...)` with a
NumPyClient and `flwr.server.strategy.FedAvg`, run by `flwr.simulation.run_simulation`
(deprecated in 1.41 in favour of `flwr run`, which adds a SuperLink process; still supported).

Ray workers get this module by reference (it is importable because the driver's sys.path, which
includes benchmarks/, is passed to them as PYTHONPATH), so each worker loads the data once and
keeps the six class partitions (uint8) in a module-level cache.
"""
from __future__ import annotations

import time

_T_PROCESS0 = time.perf_counter()  # before the heavy imports: import time counts as start-up

import argparse
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_HOST = os.path.join(os.path.dirname(_HERE), "host")
try:  # installed with `pip install -e .`?
    import semifl  # noqa: F401
except ImportError:  # no pyproject yet: use the source tree
    sys.path.insert(0, _HOST)

import numpy as np

from semifl.learn import mlp
from semifl.learn.data import load_idx_dataset, partition_by_class, to_float
from semifl.protocol.sampling import ceil_fraction, select

N_CLIENTS = 6
LR = 0.1
FRACTION = 0.3


def batch_seed(round_number: int, client_index: int) -> int:
    return (round_number * 1000003 + client_index * 7919 + 1) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- client side
_PARTS: list[tuple[np.ndarray, np.ndarray]] | None = None  # per worker process


def _partitions() -> list[tuple[np.ndarray, np.ndarray]]:
    """uint8 (x, y) of each client, loaded once per process; the full train set is dropped."""
    global _PARTS
    if _PARTS is None:
        ds = load_idx_dataset()
        idx = partition_by_class(ds.y_train, [[k] for k in range(N_CLIENTS)])
        _PARTS = [(np.ascontiguousarray(ds.x_train[i]), ds.y_train[i].astype(np.int64)) for i in idx]
    return _PARTS


def local_step(params: list[np.ndarray], client_index: int, round_number: int) -> tuple[list[np.ndarray], int]:
    x_u8, y = _partitions()[client_index]
    n = len(y)
    k = ceil_fraction(n, FRACTION)
    sel = np.asarray(select(n, k, batch_seed(round_number, client_index)), dtype=np.int64)
    _, grads = mlp.loss_and_grad(params, to_float(x_u8[sel]), y[sel])
    lr = np.float32(LR)
    return [p - lr * g for p, g in zip(params, grads)], k


def client_fn(context):
    from flwr.client import NumPyClient

    pid = int(context.node_config["partition-id"])

    class MLPClient(NumPyClient):
        def fit(self, parameters, config):
            params = [np.asarray(p, dtype=np.float32) for p in parameters]
            new, k = local_step(params, pid, int(config["server_round"]))
            return new, k, {"partition_id": pid}

    return MLPClient().to_client()


# ----------------------------------------------------------------------------- server side
def run(rounds: int, seed: int, client_cpus: float, verbose: bool = False, init_npz: str | None = None) -> dict:
    import flwr
    from flwr.client import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    # this file is __main__ in the driver; hand Flower/Ray the importable module so that the
    # workers import it (keeping their data cache) instead of receiving pickled copies
    import flower_fl_baseline as mod

    ds = load_idx_dataset()
    x_test, y_test = to_float(ds.x_test), ds.y_test.astype(np.int64)
    del ds

    acc_per_round: dict[int, float] = {}
    loss_per_round: dict[int, float] = {}
    t_round_end: dict[int, float] = {}  # perf_counter when round r's evaluation finished

    def evaluate_fn(server_round, parameters_ndarrays, config):
        acc, loss = mlp.evaluate([np.asarray(p, np.float32) for p in parameters_ndarrays], x_test, y_test)
        acc_per_round[server_round] = acc
        loss_per_round[server_round] = loss
        t_round_end[server_round] = time.perf_counter()
        if verbose or server_round % 20 == 0 or server_round <= 1:
            print(f"[flower] round {server_round:4d} acc {acc:.4f} loss {loss:.4f} "
                  f"t={t_round_end[server_round] - _T_PROCESS0:.2f}s", flush=True)
        return loss, {"accuracy": acc}

    class SortedFedAvg(FedAvg):
        """Flower's FedAvg, fed the results in client order so the float sums are reproducible."""

        def aggregate_fit(self, server_round, results, failures):
            results = sorted(results, key=lambda r: int(r[1].metrics["partition_id"]))
            return super().aggregate_fit(server_round, results, failures)

    # the initial model: semifl's seeded Glorot draw, or one given as arr_0.. (semifl.learn.initial's layout)
    start = mlp.init_params(seed=seed) if not init_npz else [a for _, a in sorted(
        np.load(init_npz).items(), key=lambda kv: int(kv[0][4:]))]

    def server_fn(context: Context):
        strategy = SortedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,  # the workload only evaluates centrally
            min_fit_clients=N_CLIENTS,
            min_evaluate_clients=0,
            min_available_clients=N_CLIENTS,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=lambda r: {"server_round": r},
            initial_parameters=ndarrays_to_parameters(start),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    backend_config = {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}}
    t0 = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=mod.client_fn),
        num_supernodes=N_CLIENTS,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
    t1 = time.perf_counter()

    if sorted(k for k in acc_per_round if k >= 1) != list(range(1, rounds + 1)):
        raise RuntimeError(f"simulation did not complete {rounds} rounds: got {sorted(acc_per_round)}")
    acc = [acc_per_round[r] for r in range(1, rounds + 1)]
    steady = ((t_round_end[rounds] - t_round_end[1]) / (rounds - 1)) if rounds > 1 else None
    return {
        "framework": "flower",
        "flwr_version": flwr.__version__,
        "ray_version": __import__("ray").__version__,
        "api": "flwr.simulation.run_simulation + ServerApp(server_fn) + NumPyClient + flwr.server.strategy.FedAvg",
        "backend": "ray",
        "client_resources": backend_config["client_resources"],
        "rounds": rounds,
        "seed": seed,
        "wall_s": t1 - t0,  # run_simulation() call: Ray start-up + all rounds + shutdown
        "s_per_round": (t1 - t0) / rounds,  # wall_s / rounds (start-up amortised in)
        "s_per_round_steady": steady,  # end of round 1 -> end of round R, per round
        "time_to_first_round_s": t_round_end[1] - t0,  # run_simulation() start -> round 1 evaluated
        "import_and_data_s": t0 - _T_PROCESS0,  # python start of this module -> run_simulation()
        "shutdown_s": t1 - t_round_end[rounds],
        "initial_accuracy": acc_per_round.get(0),
        "final_accuracy": acc[-1],
        "final_loss": loss_per_round[rounds],
        "accuracy_per_round": acc,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result JSON here")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--client-cpus", type=float, default=int(100 * ncpu / N_CLIENTS) / 100,
                    help="Ray num_cpus per ClientApp worker (default: all %d CPUs / 6 clients, "
                         "rounded down, so 6 workers fit)" % ncpu)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--init-npz", help="the initial model as arr_0.. float32 arrays (default: init_params(seed))")
    a = ap.parse_args(argv)

    res = run(a.rounds, a.seed, a.client_cpus, a.verbose, a.init_npz)
    if a.rounds >= 50 and not res["final_accuracy"] > 0.10:
        print(f"[flower] WARNING: final accuracy {res['final_accuracy']:.4f} is not above chance", file=sys.stderr)
    summary = {k: v for k, v in res.items() if k != "accuracy_per_round"}
    print(json.dumps(summary, indent=1))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["final_accuracy"] > 0.10 or a.rounds < 50 else 1


if __name__ == "__main__":
    sys.exit(main())
