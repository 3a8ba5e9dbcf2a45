"""The typed run configuration: defaults, TOML, flags, and that every error names the field and the rule."""
import argparse
import dataclasses
import json

import pytest

from semifl.config import FIELDS, ConfigError, RunConfig, add_flags, flag_overrides


def write(tmp_path, text: str, name="run.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def toml(d: dict) -> str:
    """Enough of a TOML writer for `to_dict`'s output: scalars, lists, one level of tables."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else repr(v)
    top = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items() if vv is not None)
              for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def parser(skip=frozenset()):
    ap = argparse.ArgumentParser(prog="semifl run")
    add_flags(ap, skip)
    return ap


def errors(**flat) -> str:
    with pytest.raises(ConfigError) as e:
        RunConfig.make(**flat)
    return str(e.value)


def test_defaults_are_the_documented_ones():
    c = RunConfig()
    assert (c.name, c.strategy, c.rounds, c.seed, c.lr, c.epochs) == (None, "semifl", 20, 0, 0.1, 1)
    assert (c.data, c.broker, c.out, c.plot) == (None, None, None, True)
    f = c.federated
    assert (f.fl_uploaders, f.cl_uploaders, f.prune, f.fl_fraction, f.cl_fraction) == (3, 2, 0.3, 0.3, 0.3)
    assert (f.compression, f.sparse_updates, f.int8_every, f.fl_min_battery) == ("none", False, 10, 0.0)
    assert (f.over_select, f.mode, f.quorum, f.deadline_s, f.buffer, f.max_staleness, f.concurrency) == \
        (1.0, "sync", 0, 0.0, 3, 4, 0)
    s = c.split
    assert (s.model, s.sl_batch, s.sl_batches, s.sl_lr, s.smashed, s.eval_n) == ("splitcnn-mnist", 32, 5, 0.02, "float32", 1000)
    assert (s.gen_steps, s.gen_sigma, s.gen_batch, s.gen_dim, s.pretrain_epochs, s.max_epsilon) == \
        (50, 1.5, 16, 32, 2, 10.0)
    assert (s.pretrain_n, s.gen_timeout_s) == (2000, 0.0)
    p = c.personal
    assert (p.subjects, p.per_round, p.arch, p.batch, p.momentum, p.personal_every) == (30, 5, ["3nn"], 32, 0.0, 0)
    assert (p.head_arrays, p.ft_epochs, p.lam, p.inner_lr, p.adapt_steps, p.public_n, p.raw_ok) == \
        (2, 5, 0.1, 0.01, 1, 500, [])
    v = c.sim
    assert (v.fl_devices, v.cl_devices, v.partition, v.k_classes, v.alpha) == (6, 4, "class", 2, 0.5)
    assert (v.latency_s, v.bandwidth_bps, v.drop, v.pi_battery_sleeps) == (0.0, 0.0, 0.0, False)
    assert v.pi_ram == v.pi_battery_j == v.pi_charge == v.pi_slowdown == v.silent == []
    h = c.host
    assert (h.ready_timeout_s, h.collect_timeout_s, h.startup_timeout_s, h.threads) == (10.0, 120.0, 120.0, 1)
    assert c.family == "federated" and c.replace(strategy="ditto").family == "personal"
    assert RunConfig.load() == c.validate() == RunConfig.make()


def test_default_lists_are_not_shared_between_configs():
    a, b = RunConfig(), RunConfig()
    a.personal.arch.append("cnn")
    assert b.personal.arch == ["3nn"]


def test_toml_sections_and_flat_top_level_keys_load_alike(tmp_path):
    nested = write(tmp_path, 'rounds = 7\nstrategy = "fedavg"\n[federated]\nprune = 0.5\nmode = "async"\n'
                             '[sim]\npi_ram = [4e9, 64e6]\n[host]\nthreads = 2\n', "nested.toml")
    flat = write(tmp_path, 'rounds = 7\nstrategy = "fedavg"\nprune = 0.5\nmode = "async"\n'
                           'pi_ram = [4e9, 64e6]\nthreads = 2\n', "flat.toml")
    a, b = RunConfig.load(nested), RunConfig.load(flat)
    assert a == b
    assert (a.rounds, a.strategy, a.federated.prune, a.federated.mode, a.sim.pi_ram, a.host.threads) == \
        (7, "fedavg", 0.5, "async", [4e9, 64e6], 2)
    assert a.federated.cl_uploaders == 2   # untouched settings keep their defaults


def test_overrides_beat_the_file_and_none_is_ignored(tmp_path):
    path = write(tmp_path, "rounds = 7\n[federated]\nprune = 0.5\nquorum = 2\n")
    c = RunConfig.load(path, {"rounds": 3, "prune": 0.0, "quorum": None})
    assert (c.rounds, c.federated.prune, c.federated.quorum) == (3, 0.0, 2)


def test_ints_are_accepted_for_floats_but_bools_are_not_numbers(tmp_path):
    c = RunConfig.load(write(tmp_path, "lr = 1\n[sim]\npi_ram = [4000000000, 1]\n"))
    assert c.lr == 1.0 and isinstance(c.lr, float) and all(isinstance(x, float) for x in c.sim.pi_ram)
    assert errors(rounds=True) == "rounds: must be an integer, got True"
    assert errors(lr=True) == "lr: must be a number, got True"
    assert errors(plot=1) == "plot: must be true or false, got 1"
    assert "lr: must be > 0" in errors(lr=float("nan"))


def test_type_error_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^rounds: must be an integer, got 'two'$"):
        RunConfig.load(write(tmp_path, 'rounds = "two"\n'))
    assert errors(silent=[1]) == "sim.silent[0]: must be a string, got 1"


def test_range_error_names_the_field_and_bounds(tmp_path):
    with pytest.raises(ConfigError, match=r"^federated\.prune: must be >= 0 and < 1, got 1\.5$"):
        RunConfig.load(write(tmp_path, "[federated]\nprune = 1.5\n"))
    assert errors(rounds=0) == "rounds: must be >= 1, got 0"
    assert errors(drop=-0.1) == "sim.drop: must be >= 0 and <= 1, got -0.1"
    assert errors(ready_timeout_s=0) == "host.ready_timeout_s: must be > 0, got 0.0"


def test_choice_error_lists_the_choices():
    msg = errors(strategy="foo")
    assert msg.startswith("strategy: must be one of fedavg, semifl, ") and msg.endswith("got 'foo'")
    assert "iotsl" in msg and "ditto" in msg
    assert errors(mode="later") == "federated.mode: must be one of sync, async, got 'later'"


def test_unknown_keys_suggest_the_closest(tmp_path):
    path = write(tmp_path, "roundz = 3\n")
    with pytest.raises(ConfigError) as e:
        RunConfig.load(path)
    assert str(e.value) == f"{path}: unknown setting 'roundz' (did you mean 'rounds'?)"
    with pytest.raises(ConfigError, match=r"unknown setting 'federated\.prunee' \(did you mean 'prune'\?\)"):
        RunConfig.load(write(tmp_path, "[federated]\nprunee = 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown setting 'federated\.model' \(it belongs in \[split\]\)"):
        RunConfig.load(write(tmp_path, '[federated]\nmodel = "x"\n'))
    with pytest.raises(ConfigError, match=r"unknown setting 'fedrated' \(did you mean 'federated'\?\)"):
        RunConfig.load(write(tmp_path, "[fedrated]\nprune = 0.1\n"))
    assert errors(fl_uploader=1) == "unknown setting 'fl_uploader' (did you mean 'fl_uploaders'?)"


def test_bad_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "rounds = = 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid TOML: .*line 1"):
        RunConfig.load(path)
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=rf"^{missing}: no such config file$"):
        RunConfig.load(missing)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the config file"):
        RunConfig.load(str(tmp_path))


def test_list_items_are_checked_one_by_one():
    assert errors(pi_ram=[4e9, -1]) == "sim.pi_ram[1]: must be > 0, got -1.0"
    assert errors(pi_charge="1,1.5") == "sim.pi_charge[1]: must be >= 0 and <= 1, got 1.5"
    assert errors(pi_slowdown=[0.5]) == "sim.pi_slowdown[0]: must be >= 1, got 0.5"
    assert errors(arch=["3nn", "rnn"], strategy="fd") == "personal.arch[1]: must be one of 3nn, cnn, got 'rnn'"
    assert errors(pi_ram="4e9,abc") == "sim.pi_ram: 'abc' is not a number"
    assert errors(pi_ram=5).startswith("sim.pi_ram: must be a list of numbers")


def test_several_architectures_only_for_fd():
    msg = errors(arch=["3nn", "cnn"], strategy="ditto")
    assert msg.startswith("personal.arch:") and "only with strategy fd" in msg
    assert RunConfig.make(arch="3nn,cnn", strategy="fd").personal.arch == ["3nn", "cnn"]


def test_lists_from_comma_strings():
    c = RunConfig.make(pi_ram="4e9, 64e6", raw_ok="1,0,true,no", silent="pi-00,pi-03", pi_charge="")
    assert c.sim.pi_ram == [4e9, 64e6] and c.personal.raw_ok == [True, False, True, False]
    assert c.sim.silent == ["pi-00", "pi-03"] and c.sim.pi_charge == []
    assert errors(raw_ok="1,maybe") == "personal.raw_ok: 'maybe' is not true or false"


def test_make_replace_and_flat():
    c = RunConfig.make(rounds=6, prune=0.0, pi_ram=[4e9, 64e6], fl_uploaders=6)
    assert (c.rounds, c.federated.prune, c.sim.pi_ram, c.federated.fl_uploaders) == (6, 0.0, [4e9, 64e6], 6)
    d = c.replace(prune=0.5, pi_ram=[1e9])
    assert d.federated.prune == 0.5 and c.federated.prune == 0.0 and c.sim.pi_ram == [4e9, 64e6]
    assert all(getattr(d, s) is not getattr(c, s) for s in ("federated", "split", "personal", "sim", "host"))
    assert d.personal.arch is not c.personal.arch
    d.host.threads = 8
    assert c.host.threads == 1
    with pytest.raises(ConfigError, match="federated.prune"):
        c.replace(prune=2)
    assert c.federated.prune == 0.0
    flat = c.flat()
    assert set(flat) == set(FIELDS) and flat["rounds"] == 6 and flat["pi_ram"] == [4e9, 64e6]


def test_fields_cover_every_dataclass_field_once():
    from semifl.config import SECTIONS
    expected = {f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS}
    for s, cls in SECTIONS.items():
        expected |= {f.name for f in dataclasses.fields(cls)}
        assert all(FIELDS[f.name][0] == s for f in dataclasses.fields(cls))
    assert set(FIELDS) == expected and set(SECTIONS) == {"federated", "split", "personal", "sim", "host", "trust"}
    assert all(f.metadata["help"] for _, f in FIELDS.values())


def test_to_dict_round_trips(tmp_path):
    c = RunConfig.make(name="x", strategy="fd", arch="3nn,cnn", raw_ok="1,0", pi_ram=[4e9], silent=["pi-01"],
                       data="/tmp/har", plot=False, mode="async", deadline_s=2.5, threads=4)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d and d["federated"]["mode"] == "async" and d["data"] == "/tmp/har"
    assert RunConfig.from_dict(d) == c
    assert RunConfig.from_dict({"data": None, "federated": {"prune": None}}) == RunConfig()   # None: unset
    assert RunConfig.load(write(tmp_path, toml(d))) == c
    assert RunConfig.load(write(tmp_path, toml(RunConfig().to_dict()), "default.toml")) == RunConfig()


def test_flags_given_override_and_flags_not_given_stay_none(tmp_path):
    ap = parser()
    args = ap.parse_args(["--rounds", "3", "--prune", "0.5", "--no-plot", "--pi-ram", "4e9,64e6",
                          "--raw-ok", "1,0", "--sparse-updates", "--mode", "async"])
    assert args.fl_uploaders is None and args.data is None and args.pi_charge is None and args.config is None
    over = flag_overrides(args)
    assert over == {"rounds": 3, "prune": 0.5, "plot": False, "pi_ram": [4e9, 64e6], "raw_ok": [True, False],
                    "sparse_updates": True, "mode": "async"}
    path = write(tmp_path, "rounds = 9\nfl_uploaders = 5\n[federated]\nprune = 0.1\n")
    c = RunConfig.load(ap.parse_args(["--config", path, "--rounds", "3"]).config, over)
    assert (c.rounds, c.federated.prune, c.federated.fl_uploaders, c.plot) == (3, 0.5, 5, False)
    assert flag_overrides(ap.parse_args([])) == {}


def test_range_errors_from_flags_are_config_errors():
    args = parser().parse_args(["--prune", "1.5"])
    with pytest.raises(ConfigError, match=r"^federated\.prune: must be >= 0 and < 1, got 1\.5$"):
        RunConfig.load(None, flag_overrides(args))
    args = parser().parse_args(["--pi-ram", "4e9,-1"])
    with pytest.raises(ConfigError, match=r"^sim\.pi_ram\[1\]: must be > 0"):
        RunConfig.load(None, flag_overrides(args))


def test_bad_list_item_in_a_flag_is_an_argparse_error(capsys):
    ap = argparse.ArgumentParser(prog="semifl run")
    add_flags(ap)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--pi-ram", "4e9,abc"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "semifl run: error: argument --pi-ram: 'abc' is not a number"


def test_a_flag_for_every_field():
    ap = parser()
    opts = {o: a for a in ap._actions for o in a.option_strings}
    for name, (_, f) in FIELDS.items():
        action = opts["--" + name.replace("_", "-")]
        assert action.dest == name and action.default is None
        if f.metadata["choices"] and not isinstance(f.default, list) and f.default is not dataclasses.MISSING:
            assert tuple(action.choices) == f.metadata["choices"]
    assert "--no-plot" in opts and "--no-pi-battery-sleeps" in opts and "--config" in opts
    assert opts["--fl-uploaders"].help == "K: FL devices that upload per round, top by update norm (default 3)"
    assert opts["--fl-uploaders"].type is int and opts["--prune"].type is float
    titles = {g.title for g in ap._action_groups}
    assert {"run", "federated", "split learning", "personalization", "virtual fleet", "host"} <= titles
    assert opts["--prune"] in next(g for g in ap._action_groups if g.title == "federated")._group_actions
    assert "federated: fedavg" in opts["--strategy"].help and "personal: ftl" in opts["--strategy"].help


def test_skipped_flags_are_not_generated():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker")
    ap.add_argument("--seed", type=int)
    add_flags(ap, skip={"broker", "seed"})   # no conflict with the CLI's own
    args = ap.parse_args(["--seed", "4", "--broker", "mqtt://h:1883"])
    assert flag_overrides(args) == {"seed": 4, "broker": "mqtt://h:1883"}
    assert RunConfig.load(None, flag_overrides(args)).seed == 4
    assert "--rounds" not in {o for a in parser(skip={"rounds"})._actions for o in a.option_strings}


def test_help_renders():
    text = parser(skip={"broker", "seed"}).format_help()
    assert "--fl-uploaders" in text and "--pi-battery-sleeps" in text and "--broker" not in text


def test_secure_aggregation_refuses_what_needs_single_updates():
    assert RunConfig.make(strategy="fedavg", secagg=True).trust.secagg
    for bad, said in ((dict(strategy="semifl+"), "semifl+"), (dict(mode="async"), "async"),
                      (dict(aggregation="median"), "median"), (dict(compression="auto"), "compression"),
                      (dict(fl_devices=2), "fewer than 3")):
        with pytest.raises(ConfigError, match=said):
            RunConfig.make(secagg=True, **bad)
    with pytest.raises(ConfigError, match="client-level DP"):
        RunConfig.make(dp_noise=1.0, aggregation="krum")
