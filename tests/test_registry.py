"""The registry's sets kept as reports arrive: who is online and who a round's announcement still waits for."""
from semifl.fleet.registry import Registry
from semifl.protocol import report
from semifl.service.store import Store


def caps(dev: str) -> dict:
    return report.capabilities(dev, "pi", "t/0", 1 << 30, 1 << 30, 1.0, 1.0, -50.0, 10, [10], False, 4096, ["fl"],
                               "cpython", "rpi4")


def join(reg: Registry, dev: str) -> None:
    reg.on_caps(dev, caps(dev))
    reg.on_presence(dev, b"online")


def test_online_needs_presence_and_caps_in_either_order():
    reg = Registry(Store(":memory:"))
    reg.on_presence("a", b"online")        # presence first: not online until it reported itself
    assert reg.online == set()
    reg.on_caps("a", caps("a"))
    join(reg, "b")
    assert reg.online == {"a", "b"}
    reg.on_presence("a", b"offline")
    assert reg.online == {"b"}
    assert Registry(reg.store).online == {"b"}   # a restarted host reads presence back from the store


def test_a_round_waits_for_every_online_device_but_the_busy_and_the_gone():
    reg = Registry(Store(":memory:"))
    for d in "abcd":
        join(reg, d)
    reg.expect_ready(3, not_waited={"d"})
    assert reg.unready == {"a", "b", "c"}
    reg.on_ready("a", {"round": 3})
    reg.on_presence("b", b"offline")       # gone: not waited for
    assert reg.unready == {"c"}
    join(reg, "e")                         # joined mid-wait: it answers the retained announcement too
    assert reg.unready == {"c", "e"}
    for d in "ce":
        reg.on_ready(d, {"round": 3})
    assert not reg.unready
    assert reg.answered(3) == {"a", "c", "e"}
    reg.on_presence("c", b"offline")
    assert reg.answered(3) == {"a", "e"} and reg.answered(2) == set()


def test_a_new_round_forgets_the_last_rounds_answers():
    reg = Registry(Store(":memory:"))
    for d in "ab":
        join(reg, d)
    reg.expect_ready(1)
    reg.on_ready("a", {"round": 1})
    reg.expect_ready(2)
    assert reg.unready == {"a", "b"} and reg.answered(2) == set()
