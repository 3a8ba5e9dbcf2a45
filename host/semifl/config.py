"""One typed run configuration; defaults reproduce the SemiFL seed's setup. Load from TOML, override
with flags (`semifl run --config run.toml --rounds 50`)."""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields

from semifl.fleet.planner import PlannerConfig
from semifl.service.engine import EngineConfig


@dataclass
class RunConfig:
    name: str = "semifl"
    strategy: str = "semifl"      # fedavg | semifl | semifl+ | sl | splitfed | iotsl (split learning, seed 002)
                                  # | ftl | fedper | fd | perfedavg | ditto (personalization, seed 003, on HAR)
    rounds: int = 20
    fl_devices: int = 6           # Pi-class FL clients (classes 0..5)
    cl_devices: int = 4           # MCU-class CL uploaders (classes 6..9)
    fl_uploaders: int = 3         # K: top-K FL devices by update norm upload
    cl_uploaders: int = 2         # N: top-N CL devices by channel upload
    prune: float = 0.3            # P: magnitude-pruning rate of the FL clients' local model
    fl_fraction: float = 0.3      # share of local data in an FL client's batch
    cl_fraction: float = 0.3      # S: share of a CL uploader's samples sent per round
    # on the per-sample mean cross-entropy; the seed's lr 0.1 is on MATLAB's class-averaged one, i.e. 0.01
    # here (semifl.experiments.baselines.SEED_LR, used by `semifl reproduce`). 0.1 learns visibly in 20 rounds.
    lr: float = 0.1
    epochs: int = 1
    seed: int = 0
    partition: str = "class"      # class (one per device, the seed) | k-classes | dirichlet | iid
    k_classes: int = 2            # with partition = k-classes
    alpha: float = 0.5            # with partition = dirichlet
    data: str | None = None       # IDX folder; default Debian's Fashion-MNIST
    broker: str | None = None     # mqtt://host:port; default: an embedded broker
    out: str | None = None        # default runs/<name>
    ready_timeout_s: float = 10.0
    collect_timeout_s: float = 120.0
    latency_s: float = 0.0        # simulated link of every virtual device
    bandwidth_bps: float = 0.0
    drop: float = 0.0
    int8_every: int = 10          # every N rounds the MCUs get the int8 model and report on-device accuracy (0: never)
    fl_min_battery: float = 0.0   # energy-aware planning: capable boards below this battery upload samples, not train
    sparse_updates: bool = False  # pruned FL clients send only the entries their copy holds (~P fewer bytes)
    compression: str = "none"     # none: FL clients prune at `prune`; auto: per device from its caps (seed 001)
    pi_ram: str = ""              # simulated RAM of the Pi-class devices, bytes, comma-separated and cycled
                                  # (e.g. "4e9,64e6,16e6"); empty: each reports the machine's
    pi_battery_j: str = ""        # battery capacity of the Pi-class devices, joules, comma-separated and cycled;
                                  # empty or 0: mains powered. Drained per the board's power profile (sim.fleet.pi_battery)
    pi_charge: str = ""           # their charge at start, 0..1, comma-separated and cycled (default full)
    pi_battery_idle: bool = True  # the battery also pays the board's idle power (a Pi 4 cannot sleep); False:
                                  # only work drains it (a board that sleeps between tasks)
    model: str = "splitcnn-mnist"  # split learning: the model definition (semifl.models) and its cut
    sl_batch: int = 32            # split learning: samples per smashed batch
    smashed: str = "float32"      # split learning: smashed data dtype on the wire (float32 | float16 | int8)
    eval_n: int = 0               # test samples the host evaluates each round on (0: all)
    gen_steps: int = 150          # IoTSL: generator steps per device (Algorithm 1)
    gen_sigma: float = 1.5        # IoTSL: DP noise multiplier on the generator's gradient (clip C = 1)
    gen_batch: int = 16           # IoTSL: generator batch (sampling rate q = batch / samples)
    gen_dim: int = 32             # IoTSL: generator/discriminator width (the seed: 64)
    pretrain_epochs: int = 2      # IoTSL: the host's pre-training on the generated set
    max_epsilon: float = 10.0     # IoTSL: the devices' privacy policy for a released generator
    subjects: int = 30            # personalization: HAR subjects, one device each (the seed's 30 clients)
    per_round: int = 5            # personalization: K devices per round (the seed's 5); 0: all
    arch: str = "3nn"             # personalization: 3nn | cnn (the seed's case study); FD may mix, e.g. "3nn,cnn" cycled
    batch: int = 32               # personalization: local minibatch
    momentum: float = 0.0         # personalization: local SGD momentum
    personal_every: int = 0       # personalization: every device personalizes and reports every N rounds (and at the last)
    head_arrays: int = 2          # FedPer: parameter arrays of the personal head (2: the last layer)
    ft_epochs: int = 5            # FTL: fine-tuning epochs
    lam: float = 0.1              # Ditto: pull of the personal model towards the global one
    inner_lr: float = 0.01        # Per-FedAvg: the inner (adaptation) step alpha
    adapt_steps: int = 1          # Per-FedAvg: inner steps a device adapts with
    public_n: int = 500           # FD: public samples per round (the seed's 500)
    raw_ok: str = ""              # personalization: may a device's windows leave it (edge offloading)? 0/1, comma-separated, cycled
    plot: bool = True

    @classmethod
    def load(cls, path: str | None = None, **overrides) -> "RunConfig":
        values = {}
        if path:
            with open(path, "rb") as f:
                values = tomllib.load(f)
            unknown = set(values) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def engine(self) -> EngineConfig:
        return EngineConfig(seed=self.seed, lr=self.lr, epochs=self.epochs, prune=self.prune,
                            fl_fraction=self.fl_fraction, cl_fraction=self.cl_fraction,
                            planner=PlannerConfig(cl_uploaders=self.cl_uploaders, fl_uploaders=self.fl_uploaders,
                                                  fl_min_battery=self.fl_min_battery),
                            ready_timeout_s=self.ready_timeout_s, collect_timeout_s=self.collect_timeout_s,
                            int8_every=self.int8_every, compression=self.compression,
                            sparse_updates=self.sparse_updates)

    def to_dict(self) -> dict:
        return asdict(self)
