"""The typed run configuration: run-wide settings plus one section per concern (federated, split,
personal, sim, host). Defaults reproduce the seed papers' setups. Load from TOML, then override with
flags (`semifl run --config run.toml --rounds 50`); flags are generated from the fields below."""
import argparse
import copy
import dataclasses
import difflib
import operator
import tomllib
import types
import urllib.parse
from dataclasses import dataclass
from typing import get_args, get_origin

from semifl.learn.registry import FAMILIES, STRATEGIES, names


class ConfigError(ValueError):
    """A setting is unknown or its value is not allowed; the message names it by its dotted path."""


def setting(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A field with what validation, flags and docs need. For list fields the bounds and choices
    apply to each item."""
    meta = dict(help=help, ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices) if choices else None)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, title: str):
    return dataclasses.field(default_factory=cls, metadata=dict(title=title))


@dataclass
class Federated:
    fl_uploaders: int = setting(3, "K: FL devices that upload per round, top by update norm", ge=0)
    cl_uploaders: int = setting(2, "N: CL devices that upload per round, top by channel", ge=0)
    prune: float = setting(0.3, "P: magnitude-pruning rate of the FL clients' copy of the model", ge=0, lt=1)
    prune_global: bool = setting(False, "the host prunes its own model at P before each step too, not only the FL "
                                 "clients' copy, so the entries they cannot see do not drift (the SemiFL seed's "
                                 "published curves behave so; `semifl reproduce` runs its baselines this way)")
    fl_fraction: float = setting(0.3, "share of local data in an FL client's batch", gt=0, le=1)
    server_lr: float = setting(0.0, "semifl+: the step of its server optimizer, Adam (0: its own, 0.005)", ge=0)
    server_beta2: float = setting(0.0, "semifl+: Adam's second-moment decay (0: its own, 0.99)", ge=0, lt=1)
    cl_fraction: float = setting(0.3, "S: share of a CL uploader's samples sent per round", gt=0, le=1)
    fresh_samples: bool = setting(True, "where the host keeps every CL sample it receives (semifl+), a CL "
                                  "uploader sends only the samples of its selection the host does not hold yet")
    compression: str = setting("none", "none: FL clients prune at --prune; auto: each FL client's copy is "
                               "compressed to its capabilities (prune, fp16/int8 deltas; seed 001)",
                               choices=("none", "auto"))
    sparse_updates: bool = setting(False, "pruned FL clients send only the entries their copy holds "
                                   "(the host knows the mask)")
    int8_every: int = setting(10, "rounds between int8 model pushes to the MCUs, which report on-device "
                              "accuracy (0: never)", ge=0)
    fl_min_battery: float = setting(0.0, "energy-aware planning: a capable board below this battery level "
                                    "uploads samples instead of training", ge=0, le=1)
    over_select: float = setting(1.0, "a round tasks ceil(K * (1 + over_select)) FL clients, not every "
                                 "capable device", ge=0)
    mode: str = setting("sync", "sync: rounds wait for their tasked clients; async: buffered merges",
                        choices=("sync", "async"))
    quorum: int = setting(0, "sync: a round may close once this many of the tasked FL clients have "
                          "reported (0: all of them)", ge=0)
    deadline_s: float = setting(0.0, "sync: a round closes once its quorum is in and this much time has "
                                "passed, or when every tasked client is in (0: no soft deadline)", ge=0)
    buffer: int = setting(3, "async: merge every B updates", ge=1)
    max_staleness: int = setting(4, "async: an update trained on a model more than S versions old is "
                                 "dropped", ge=0)
    concurrency: int = setting(0, "async: FL clients training at once (0: every capable one)", ge=0)


@dataclass
class Split:
    model: str = setting("splitcnn-mnist", "split learning: a model definition with a device part "
                         "(semifl.models) and its cut")
    sl_batch: int = setting(32, "split learning: samples per smashed-data batch", ge=1)
    sl_batches: int = setting(5, "split learning: smashed-data batches each device trains per round, drawn "
                              "from its shuffled local set (0: all of them, an epoch, as the seed)", ge=0)
    sl_lr: float = setting(0.02, "split learning: the SGD step of f_a, f_b and iotsl's pre-training, in place of "
                           "--lr (0: --lr); the split CNN's ReLUs die at the federated default 0.1", ge=0)
    smashed: str = setting("float32", "split learning: smashed data dtype on the wire",
                           choices=("float32", "float16", "int8"))
    eval_n: int = setting(1000, "test samples the host evaluates on each round (0: all)", ge=0)
    gen_steps: int = setting(50, "iotsl: generator steps per device (Algorithm 1)", ge=1)
    gen_sigma: float = setting(1.5, "iotsl: DP noise multiplier on the generator's gradient (clip C = 1)", gt=0)
    gen_batch: int = setting(16, "iotsl: generator batch (sampling rate q = batch / samples)", ge=1)
    gen_dim: int = setting(32, "iotsl: generator/discriminator width (the seed: 64)", ge=1)
    pretrain_epochs: int = setting(2, "iotsl: the host's pre-training epochs on the generated set", ge=0)
    pretrain_n: int = setting(2000, "iotsl: generated samples the host pre-trains on, the same share of every "
                              "device's classes (0: every device's whole histogram, as the seed)", ge=0)
    gen_timeout_s: float = setting(0.0, "iotsl: how long the host waits for the devices' generators; a device "
                                   "stops training at 0.8 of it and sends what it has (0: --collect-timeout-s)", ge=0)
    max_epsilon: float = setting(10.0, "iotsl: the devices' privacy policy for a released generator", gt=0)


@dataclass
class Personal:
    subjects: int = setting(30, "personalization: HAR subjects, one device each (the seed's 30 clients)", ge=1)
    per_round: int = setting(5, "personalization: devices per round (the seed's 5; 0: all)", ge=0)
    arch: list[str] = setting(["3nn"], "personalization: the devices' model, cycled; more than one only "
                              "with strategy fd", choices=("3nn", "cnn"))
    batch: int = setting(32, "personalization: local minibatch", ge=1)
    momentum: float = setting(0.0, "personalization: local SGD momentum", ge=0, lt=1)
    personal_every: int = setting(0, "personalization: every device reports its personal accuracy every "
                                  "N rounds and at the last (0: only at the last)", ge=0)
    head_arrays: int = setting(2, "fedper: parameter arrays of the personal head (2: the last layer)", ge=1)
    ft_epochs: int = setting(5, "ftl: fine-tuning epochs", ge=0)
    lam: float = setting(0.1, "ditto: pull of the personal model towards the global one", ge=0)
    inner_lr: float = setting(0.01, "perfedavg: the inner (adaptation) step alpha", gt=0)
    adapt_steps: int = setting(1, "perfedavg: inner steps a device adapts with", ge=0)
    public_n: int = setting(500, "fd: public samples per round (the seed's 500)", ge=1)
    raw_ok: list[bool] = setting([], "personalization: may each device's windows leave it (edge "
                                 "offloading)? true/false or 1/0, cycled over devices (default: none may)")


@dataclass
class Sim:
    fl_devices: int = setting(6, "Pi-class FL clients (the seed: classes 0..5)", ge=0)
    cl_devices: int = setting(4, "MCU-class CL uploaders (the seed: classes 6..9)", ge=0)
    partition: str = setting("class", "how the training data is split over devices (class: one each, "
                             "as the seed)", choices=("class", "k-classes", "dirichlet", "iid"))
    k_classes: int = setting(2, "classes per device with partition k-classes", ge=1)
    alpha: float = setting(0.5, "Dirichlet concentration with partition dirichlet", gt=0)
    latency_s: float = setting(0.0, "simulated link latency per message of every virtual device", ge=0)
    bandwidth_bps: float = setting(0.0, "simulated link bandwidth of every virtual device (0: unlimited)", ge=0)
    drop: float = setting(0.0, "probability a virtual device misses a round", ge=0, le=1)
    pi_ram: list[float] = setting([], "simulated RAM of the Pi-class devices, bytes, cycled (e.g. "
                                  "4e9,64e6,16e6; default: each reports the machine's)", gt=0)
    pi_battery_j: list[float] = setting([], "battery capacity of the Pi-class devices, joules, cycled "
                                        "(0 or default: mains powered)", ge=0)
    pi_charge: list[float] = setting([], "the Pi-class devices' charge at start, cycled (default: full)",
                                     ge=0, le=1)
    mcu_battery_j: float = setting(2000.0, "battery capacity of each MCU-class device, joules, drained by what it "
                                   "sends (0: mains powered; at 2000 J an MCU that sends all 6,000 of its samples "
                                   "every round runs flat after about 400 rounds)", ge=0)
    pi_battery_sleeps: bool = setting(False, "the Pis' batteries pay only for work, not idle time (a board "
                                      "that sleeps between tasks)")
    pi_slowdown: list[float] = setting([], "simulated stragglers, cycled over the Pi-class devices: a device "
                                       "with factor f computes f times slower and its link is f times "
                                       "slower", ge=1)
    pi_train_s: float = setting(0.0, "simulated compute: a virtual Pi's training task takes at least this "
                                "long (before its slowdown); 0: as long as it takes here", ge=0)
    silent: list[str] = setting([], "device ids that answer each round's announcement but never do their "
                                "tasks (a simulated fault)")
    workers: int = setting(0, "processes the virtual devices that share one spread over, each device its own "
                           "MQTT connection on the worker's loop (0: one per core)", ge=0)
    mcu_processes: int = setting(16, "MCU devices (the first ones) that run as real MicroPython processes; the rest "
                                 "run the same node code in the workers", ge=0)
    own_processes: bool = setting(False, "every virtual device in a process of its own, none in workers (e.g. a "
                                  "power meter per device process)")


SUM_RULES = ("mean", "norm_bound")   # rules that only clip and sum: what SecAgg and client DP can do (devices clip)


@dataclass
class Trust:
    """What a run trusts of its devices and its links (docs/trust.md)."""
    aggregation: str = setting("norm_bound", "how FL updates are merged: mean (FedAvg's weighted mean), norm_bound "
                               "(the mean of updates clipped to --clip-norm: an honest round is unchanged), median (coordinate-wise), trimmed_mean, krum, "
                               "multi_krum", choices=("mean", "norm_bound", "median", "trimmed_mean", "krum", "multi_krum"))
    clip_norm: float = setting(0.0, "norm_bound: the L2 bound of an update (0: adaptive, a multiple of the round's "
                               "median update norm)", ge=0)
    trim: float = setting(0.2, "trimmed_mean: share of updates dropped at each end, per coordinate", ge=0, lt=0.5)
    byzantine: int = setting(0, "krum / multi_krum: the f Byzantine clients a round tolerates (0: the most the "
                             "round's clients allow, (n - 3) // 2)", ge=0)
    quarantine_after: int = setting(3, "a device whose updates or samples are outliers this many rounds in a row "
                                    "is quarantined: never planned again in the run (0: never)", ge=0)
    dp_noise: float = setting(0.0, "client-level DP: noise multiplier z of the Gaussian noise on the clipped sum "
                              "of FL updates (0: off)", ge=0)
    dp_clip: float = setting(1.0, "client-level DP: the L2 clip of each FL update (with --dp-adaptive: its start)",
                             gt=0)
    dp_adaptive: bool = setting(False, "client-level DP: the clip follows a quantile of the updates' norms "
                                "(Andrew et al. 2021)")
    dp_delta: float = setting(1e-5, "client-level DP: the delta of the (epsilon, delta) the summary reports",
                              gt=0, lt=1)
    secagg: bool = setting(False, "FL clients mask their updates (SecAgg+): the host learns only their sum")
    insecure: bool = setting(False, "allow an anonymous, unencrypted broker beyond loopback (never the default)")


@dataclass
class Host:
    ready_timeout_s: float = setting(10.0, "how long a round waits for devices' ready reports", gt=0)
    collect_timeout_s: float = setting(120.0, "the hard limit on any one wait for devices' work (training, "
                                       "uploads, generators, an epoch's silence)", gt=0)
    startup_timeout_s: float = setting(120.0, "how long `semifl run` waits for the next device of its virtual fleet "
                                       "to come up: the wait goes on while devices keep arriving", gt=0)
    # the host's aggregates must not depend on how many cores the machine has
    threads: int = setting(1, "BLAS threads of the host's own arithmetic", ge=1)


_STRATEGY_HELP = "the algorithm; " + "; ".join(f"{fam}: {', '.join(names(fam))}" for fam in FAMILIES)


@dataclass
class RunConfig:
    name: str | None = setting(None, "the run's name (default: the strategy); names its folder under runs/")
    strategy: str = setting("semifl", _STRATEGY_HELP, choices=names())
    rounds: int = setting(20, "rounds to run", ge=1)
    seed: int = setting(0, "seed of data partition, initialization and sampling", ge=0)
    init: str | None = setting(None, "initial global model: the SemiFL seed's code/get_initial_model.mat (MATLAB "
                               "v7.3) or an .npz (W1..b4 as MATLAB's, or a run's final_model.npz); default: "
                               "Glorot-uniform from --seed")
    # on the per-sample mean cross-entropy; the seed's lr 0.1 is on MATLAB's class-averaged one, i.e. 0.01
    # here (semifl.experiments.baselines.SEED_LR, used by `semifl reproduce`). 0.1 learns visibly in 20 rounds.
    lr: float = setting(0.1, "step size on the per-sample mean loss", gt=0)
    epochs: int = setting(1, "local epochs per round", ge=1)
    data: str | None = setting(None, "IDX/HAR folder (default: Debian's Fashion-MNIST)")
    broker: str | None = setting(None, "mqtt://[user:password@]host:port of an external broker (default: embedded)")
    out: str | None = setting(None, "output folder (default: a new runs/<name>-<date>-<time>); one that "
                              "is not empty is refused unless --overwrite")
    plot: bool = setting(True, "write the accuracy plot")
    federated: Federated = section(Federated, "federated")
    split: Split = section(Split, "split learning")
    personal: Personal = section(Personal, "personalization")
    sim: Sim = section(Sim, "virtual fleet")
    host: Host = section(Host, "host")
    trust: Trust = section(Trust, "trust")

    @property
    def family(self) -> str:
        return STRATEGIES[self.strategy].family

    @classmethod
    def load(cls, path: str | None = None, overrides: dict | None = None) -> "RunConfig":
        cfg = cls()
        if path:
            try:
                with open(path, "rb") as f:
                    cfg._merge(tomllib.load(f), path)
            except FileNotFoundError:
                raise ConfigError(f"{path}: no such config file") from None
            except OSError as e:
                raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cfg._merge(overrides or {}, None).validate()

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """The inverse of `to_dict`; also takes section keys at top level, like a TOML file."""
        return cls()._merge(data, None).validate()

    @classmethod
    def make(cls, **flat) -> "RunConfig":
        return cls()._merge(flat, None).validate()

    def replace(self, **flat) -> "RunConfig":
        return copy.deepcopy(self)._merge(flat, None).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        return {n: getattr(self._owner(s), n) for n, (s, _) in FIELDS.items()}

    def validate(self) -> "RunConfig":
        """Checks every field against its metadata and normalizes in place (ints to floats, comma
        strings to lists), so a config built by hand is checked like a loaded one."""
        for n, (s, f) in FIELDS.items():
            owner = self._owner(s)
            setattr(owner, n, _check(f"{s}.{n}" if s else n, f, getattr(owner, n)))
        if self.broker is not None:
            u = urllib.parse.urlparse(self.broker)
            try:
                u.port
            except ValueError:
                u = None
            if u is None or u.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not u.hostname:
                raise ConfigError(f"broker: must look like mqtt://[user[:password]@]host:port (mqtts:// for TLS), got {self.broker!r}")
        if self.family != "personal" and self.sim.fl_devices + self.sim.cl_devices == 0:
            raise ConfigError("sim.fl_devices + sim.cl_devices: a run needs at least one device, got 0 "
                              "(--fl-devices, --cl-devices or --devices)")
        t, f = self.trust, self.federated
        if t.secagg:   # the host sees only the sum: nothing may need a single update
            why = [w for w, bad in (
                (f"strategy {self.strategy!r} (fedavg or semifl: semifl+ carries single late updates)",
                 self.strategy not in ("fedavg", "semifl")),
                ("--mode async (buffered merges take single updates)", f.mode != "sync"),
                (f"--aggregation {t.aggregation} (a robust rule inspects single updates; devices clip instead)",
                 t.aggregation not in SUM_RULES),
                ("--compression auto or --sparse-updates (per-device masks differ between summands)",
                 f.compression != "none" or f.sparse_updates),
                ("fewer than 3 FL devices (a sum of two reveals each to the other)", self.sim.fl_devices < 3))
                if bad]
            if why:
                raise ConfigError("trust.secagg: secure aggregation does not go with " + "; ".join(why))
        if (t.dp_noise > 0 or t.dp_adaptive) and t.aggregation not in SUM_RULES:
            raise ConfigError(f"trust.dp_noise: client-level DP clips and averages every update itself; it does "
                              f"not go with --aggregation {t.aggregation}")
        if self.init is not None and self.family != "federated":
            raise ConfigError(f"init: an initial model file is the federated strategies' MLP; strategy "
                              f"{self.strategy!r} ({self.family}) builds its own model")
        if len(self.personal.arch) > 1 and self.strategy != "fd":
            raise ConfigError(f"personal.arch: more than one architecture only with strategy fd (its devices "
                              f"exchange logits, not weights), got {self.personal.arch} with {self.strategy!r}")
        return self

    def notes(self) -> list[str]:
        """Settings that are allowed but probably not what was meant, one sentence each."""
        out = []
        if self.family == "federated":
            f, sim = self.federated, self.sim
            if f.fl_uploaders > sim.fl_devices:
                out.append(f"federated.fl_uploaders is {f.fl_uploaders} but the fleet has {sim.fl_devices} FL "
                           f"device(s): every FL device uploads")
            if STRATEGIES[self.strategy].uses_cl and f.cl_uploaders > sim.cl_devices:
                out.append(f"federated.cl_uploaders is {f.cl_uploaders} but the fleet has {sim.cl_devices} CL "
                           f"device(s): every CL device uploads")
        return out

    def _owner(self, s: str | None):
        return getattr(self, s) if s else self

    def _merge(self, data: dict, source: str | None) -> "RunConfig":
        """Sets raw values from a nested (TOML-shaped) or flat dict; None leaves a setting as it is."""
        for key, value in data.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: must be a table of settings ([{key}]), got {value!r}")
                for sub, v in value.items():
                    if FIELDS.get(sub, (None,))[0] != key:
                        raise _unknown(f"{key}.{sub}", sub, source, [n for n, (s, _) in FIELDS.items() if s == key])
                    if v is not None:
                        setattr(getattr(self, key), sub, v)
            elif key in FIELDS:
                if value is not None:
                    setattr(self._owner(FIELDS[key][0]), key, value)
            else:
                raise _unknown(key, key, source, [*FIELDS, *SECTIONS])
        return self


def _unknown(dotted: str, name: str, source: str | None, candidates) -> ConfigError:
    where = f"{source}: " if source else ""
    if name in FIELDS and FIELDS[name][0]:
        hint = f" (it belongs in [{FIELDS[name][0]}])"
    elif name in FIELDS:
        hint = " (it is a run-wide setting: put it at the top, before any [section])"
    else:
        close = difflib.get_close_matches(name, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}unknown setting {dotted!r}{hint}")


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.type)}
FIELDS: dict[str, tuple[str | None, dataclasses.Field]] = {
    **{f.name: (None, f) for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS},
    **{f.name: (s, f) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}}
# a flat name (flag, override, top-level TOML key) must identify exactly one field
_names = [f.name for c in (RunConfig, *SECTIONS.values()) for f in dataclasses.fields(c)]
if len(set(_names)) != len(_names):
    raise TypeError(f"config field names must be unique: {sorted({n for n in _names if _names.count(n) > 1})}")


def _kind(f: dataclasses.Field) -> tuple[type, bool, bool]:
    """(item type, is a list, may be None)."""
    tp, optional = f.type, False
    if isinstance(tp, types.UnionType):
        tp, optional = next(a for a in get_args(tp) if a is not type(None)), True
    if get_origin(tp) is list:
        return get_args(tp)[0], True, optional
    return tp, False, optional


_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
_BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))


def _parse(base: type, text: str):
    """One list item as a flag or an old-style comma-separated TOML string carries it."""
    text = text.strip()
    if base is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
    else:
        try:
            return base(text)
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not {_WHAT[base]}")


def _items(text: str) -> list[str]:
    return [s for s in text.split(",") if s.strip()]


def _check(path: str, f: dataclasses.Field, value):
    base, is_list, optional = _kind(f)
    if value is None and optional:
        return None
    if not is_list:
        return _check_one(path, base, f.metadata, value)
    if isinstance(value, str):   # flags and older config files give lists as "4e9,64e6"
        try:
            value = [_parse(base, s) for s in _items(value)]
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: must be a list of {_PLURAL[base]} (or one comma-separated string), "
                          f"got {value!r}")
    return [_check_one(f"{path}[{i}]", base, f.metadata, v) for i, v in enumerate(value)]


def _check_one(path: str, base: type, meta, value):
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass, but `rounds = true` is a mistake, not 1
    if not isinstance(value, base) or (base is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: must be {_WHAT[base]}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{path}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    rules = [(sym, meta[k], op) for k, sym, op in _BOUNDS if meta[k] is not None]
    if not all(op(value, bound) for _, bound, op in rules):   # written so NaN fails too
        raise ConfigError(f"{path}: must be {' and '.join(f'{s} {b}' for s, b, _ in rules)}, got {value!r}")
    return value


def _show(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(map(_show, v))
    return str(v)


def _list_type(base: type):
    def parse(text: str) -> list:
        try:
            return [_parse(base, s) for s in _items(text)]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = f"list of {base.__name__}"
    return parse


_METAVAR = {int: "N", float: "X", str: "TEXT", bool: "BOOL"}


def add_flags(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    """One flag per field (`fl_uploaders` -> `--fl-uploaders`), grouped by section. Every flag
    defaults to None, so only the flags given override the config file (see `flag_overrides`)."""
    groups = {None: parser.add_argument_group("run")}
    groups.update({f.name: parser.add_argument_group(f.metadata["title"])
                   for f in dataclasses.fields(RunConfig) if f.name in SECTIONS})
    if "config" not in skip:
        groups[None].add_argument("--config", metavar="PATH", help="TOML file; flags override it")
    for n, (s, f) in FIELDS.items():
        if n in skip:
            continue
        base, is_list, _ = _kind(f)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f.metadata["help"] + ("" if default in (None, []) else f" (default {_show(default)})")
        kw = dict(dest=n, default=None, help=text.replace("%", "%%"))
        choices = f.metadata["choices"]
        if base is bool and not is_list:
            kw["action"] = argparse.BooleanOptionalAction
        elif is_list:   # argparse cannot check list items against choices; validation does
            kw.update(type=_list_type(base), metavar=("|".join(choices) if choices else _METAVAR[base]) + ",...")
        elif n == "strategy":   # its help lists the names with their families
            kw.update(choices=choices, metavar="NAME")
        else:
            kw.update(type=base, choices=choices, metavar=None if choices else _METAVAR[base])
        groups[s].add_argument("--" + n.replace("_", "-"), **kw)


def flag_overrides(args: argparse.Namespace) -> dict:
    """The settings the user gave as flags, by flat name, for `RunConfig.load(path, overrides)`."""
    return {n: getattr(args, n) for n in FIELDS if getattr(args, n, None) is not None}
