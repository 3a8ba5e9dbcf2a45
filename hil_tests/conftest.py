"""HIL bench fixtures in the style of pytest-embedded: the DUT, its meter, the broker, the host.

    pytest hil_tests                                              # simulated bench (CI)
    pytest hil_tests --hil-port /dev/ttyUSB0 --meter ppk2 --hil-broker-url mqtt://192.168.1.10:1883
    pytest hil_tests --meter replay-ina219                        # simulated DUT, a recorded meter stream

Simulated: the DUT is the real MicroPython node (the board build, at the board's heap) in the
virtual fleet, its meter the virtual one watching that process. With --hil-port the DUT is a board on
that port, flashed by test_1_flash with `semifl flash --phases`, and --meter names its meter.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hil_bench import BoardDUT, SimDUT, run_bench  # noqa: E402

from semifl.energy import load_profile  # noqa: E402
from semifl.meters import METERS, open_meter  # noqa: E402

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "data" / "meters"
# --meter replay-<driver>: that driver's recorded stream (tests/data/meters) stands in for the meter
REPLAYS = {"replay-ppk2": {"path": RECORDED / "ppk2_source_3v3.bin", "vdd_mv": 3300},
           "replay-ina219": {"path": RECORDED / "ina219_registers.csv"}}


def pytest_addoption(parser):
    g = parser.getgroup("hil", "hardware-in-the-loop bench")
    g.addoption("--hil-port", default=None, help="serial port of a real DUT (default: simulated bench)")
    g.addoption("--meter", default="virtual", choices=METERS, help="the DUT's power meter")
    g.addoption("--meter-port", default=None, help="the meter's serial port (ppk2: found by itself; usb: /dev/rfcomm0)")
    g.addoption("--hil-board", default="esp32", choices=["esp32", "esp32s3", "rp2040w"], help="the DUT's board profile")
    g.addoption("--hil-broker-url", default=None,
                help="with --hil-port: the bench's broker as the board reaches it (the bench listens on 0.0.0.0)")
    g.addoption("--hil-rounds", type=int, default=3)


@pytest.fixture(scope="session")
def hil(request):
    o = request.config.option
    if o.hil_port is None and o.meter != "virtual" and o.meter not in REPLAYS:
        pytest.skip(f"--meter {o.meter} measures a real DUT: give --hil-port")
    return o


@pytest.fixture(scope="session")
def profile(hil):
    return load_profile(hil.hil_board)


@pytest.fixture(scope="session")
def broker(hil):
    from semifl.transport.broker import EmbeddedBroker

    with EmbeddedBroker(host="127.0.0.1" if hil.hil_port is None else "0.0.0.0") as b:
        yield b.url.replace("0.0.0.0", "127.0.0.1")


@pytest.fixture(scope="session")
def dataset():
    from semifl.learn.data import FASHION_MNIST_DIR, load_idx_dataset

    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    return load_idx_dataset()


@pytest.fixture(scope="session")
def dut(hil):
    if hil.hil_port is None:
        from semifl.sim.fleet import micropython_ready

        why = micropython_ready()
        if why:
            pytest.skip(f"simulated DUT: {why}")
        yield SimDUT(hil.hil_board)
        return
    d = BoardDUT(hil.hil_port, hil.hil_board, "mcu-01")
    yield d
    d.close()


@pytest.fixture(scope="session")
def make_meter(hil, profile):
    """The DUT's meter, made once the DUT runs (the virtual one needs its process)."""
    def make(dut):
        if hil.meter == "virtual":
            return open_meter("virtual", pid=dut.pid(), profile=profile)
        if hil.meter in REPLAYS:   # a recorded stream of that driver, played back as the DUT's meter
            return open_meter(hil.meter, **REPLAYS[hil.meter])
        kw = {"port": hil.meter_port} if hil.meter in ("ppk2", "usb") and hil.meter_port else {}
        if hil.meter == "ppk2":
            kw["vdd_mv"] = int(profile.voltage_v * 1000)
        return open_meter(hil.meter, **kw)
    return make


@pytest.fixture(scope="session")
def bench(hil, dut, make_meter, broker, dataset, tmp_path_factory):
    """The host running --hil-rounds rounds with the DUT as CL uploader; what the bench saw."""
    return run_bench(dut, make_meter, broker, dataset, tmp_path_factory.mktemp("bench"), rounds=hil.hil_rounds)
