"""`semifl flash` against a fake board: a real pty as its serial port, a folder as its flash, and the
real MicroPython unix port answering the read-back. No board in CI; the commands, the files that land
and the verification are what is checked."""
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from semifl.cli import main as cli
from semifl.flash.flash import FlashError, FlashJob, flash

pytestmark = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                                reason="needs micropython and mpy-cross")


class FakeBoard:
    """Interprets the esptool/mpremote command lines flash() runs, against a folder."""

    def __init__(self, root: Path, port: str, corrupt: str | None = None):
        self.root, self.port, self.corrupt = root, port, corrupt
        self.log: list[list[str]] = []

    def __call__(self, cmd, capture_output=True, text=True, timeout=None):
        self.log.append(cmd)
        ok = lambda out="": subprocess.CompletedProcess(cmd, 0, out, "")
        if cmd[0] == "esptool":
            assert cmd[cmd.index("--port") + 1] == self.port
            if "erase-flash" in cmd:
                shutil.rmtree(self.root)
                self.root.mkdir()
            return ok()
        assert cmd[:3] == ["mpremote", "connect", self.port]
        op = cmd[3:]
        if op[:2] == ["fs", "mkdir"]:
            d = self.root / op[2].lstrip(":")
            if d.exists():
                return subprocess.CompletedProcess(cmd, 1, "", f"mkdir: {op[2]}: File exists")
            d.mkdir()   # no parents: a board's os.mkdir makes one level
            return ok()
        if op[:2] == ["fs", "cp"]:
            dst = self.root / op[3].lstrip(":")
            data = Path(op[2]).read_bytes()
            if op[3] == f":{self.corrupt}":
                data = data[:-1] + bytes([data[-1] ^ 1])   # one flipped bit on the way
            dst.write_bytes(data)
            return ok()
        if op[0] == "exec":
            return subprocess.run(["micropython", "-c", op[1]], cwd=self.root, capture_output=True, text=True, timeout=60)
        if op == ["reset"]:
            return ok()
        raise AssertionError(f"unexpected command {cmd}")


@pytest.fixture
def port():
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def job(tmp_path, port, **kw):
    return FlashJob(port=port, board="esp32", device_id="mcu-01", build=tmp_path / "build",
                    broker="mqtt://10.0.0.2:1883", wifi_ssid="bench", **kw)


def test_dry_run_prints_one_command_per_line(tmp_path, capsys):
    fw = tmp_path / "ESP32_GENERIC.bin"
    fw.write_bytes(b"\xe9" + bytes(100))
    rc = cli(["flash", "--dry-run", "--port", "/dev/ttyUSB0", "--board", "esp32", "--device-id", "mcu-01",
              "--broker-url", "mqtt://10.0.0.2:1883", "--wifi-ssid", "bench",
              "--firmware", str(fw), "--build", str(tmp_path / "b")])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cmds = [shlex.split(line) for line in lines]
    assert cmds[0] == ["esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "erase-flash"]
    assert cmds[1][-4:] == ["write-flash", "-z", "0x1000", str(fw)]
    assert all(c[:3] == ["mpremote", "connect", "/dev/ttyUSB0"] for c in cmds[2:])
    mkdirs = [c[5] for c in cmds if c[3:5] == ["fs", "mkdir"]]
    assert mkdirs == [":lib", ":semifl_node", ":lib/umqtt"]   # parents before children
    copied = {c[6]: Path(c[5]) for c in cmds if c[3:5] == ["fs", "cp"]}
    assert {":boot.py", ":main.py", ":config.json", ":wire.mpy", ":sampling.mpy", ":semifl_node/node.mpy",
            ":lib/umqtt/simple.mpy"} <= set(copied)
    assert ":link.mpy" not in copied   # the simulator's radio stays off real boards
    assert all(src.exists() for src in copied.values())
    # compiled modules (.mpy v6, what MicroPython >= 1.22 loads), and config.json says who the board is
    assert copied[":wire.mpy"].read_bytes()[:2] == b"M\x06"
    cfg = json.loads(copied[":config.json"].read_text())
    assert cfg["id"] == "mcu-01" and cfg["board"] == "esp32" and cfg["wifi_password"] == ""
    assert cfg["broker"] == "mqtt://10.0.0.2:1883" and cfg["wifi_ssid"] == "bench"
    assert cmds[-2][3] == "exec" and cmds[-1][3:] == ["reset"]


@pytest.mark.parametrize("give, says", [
    ([], "--broker-url, --wifi-ssid"),
    (["--wifi-ssid", "bench"], "--broker-url"),
    (["--broker-url", "mqtt://10.0.0.2:1883"], "--wifi-ssid"),
    (["--broker-url", "http://10.0.0.2", "--wifi-ssid", "bench"], "mqtt://"),
    (["--broker-url", "mqtt://10.0.0.2:1883", "--wifi-ssid", ""], "--wifi-ssid: must not be empty"),
])
def test_no_broker_or_wifi_no_flash(tmp_path, capsys, give, says):
    """No made-up broker address or empty network in a board's config: the flag is asked for, nothing built."""
    with pytest.raises(SystemExit) as e:
        cli(["flash", "--dry-run", "--port", "/dev/ttyUSB0", "--device-id", "mcu-01", "--build", str(tmp_path / "b")]
            + give)
    assert e.value.code == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.strip().splitlines()[-1].startswith("semifl flash: error: ")
    assert says in err.err and not (tmp_path / "b").exists()


def test_flash_copies_verifies_and_resets(tmp_path, port):
    board = FakeBoard(tmp_path / "board", port)
    board.root.mkdir()
    samples = tmp_path / "samples.bin"
    samples.write_bytes(bytes(range(256)) * 40)
    out = []
    assert flash(job(tmp_path, port, samples=samples), echo=out.append, run=board) == 0
    built = {p.relative_to(tmp_path / "build" / "app"): p.read_bytes()
             for p in (tmp_path / "build" / "app").rglob("*") if p.is_file()}
    on_board = {p.relative_to(board.root): p.read_bytes() for p in board.root.rglob("*") if p.is_file()}
    assert on_board == built and Path("samples.bin") in on_board
    assert any("verified" in line for line in out) and board.log[-1][3:] == ["reset"]


def test_a_file_corrupted_on_the_way_fails_the_read_back(tmp_path, port):
    board = FakeBoard(tmp_path / "board", port, corrupt="wire.mpy")
    board.root.mkdir()
    with pytest.raises(FlashError, match="wire.mpy: board has"):
        flash(job(tmp_path, port), run=board)
    assert board.log[-1][3] == "exec"   # and the board is not reset into a broken app


def test_a_second_flash_over_existing_folders_succeeds(tmp_path, port):
    board = FakeBoard(tmp_path / "board", port)
    board.root.mkdir()
    flash(job(tmp_path, port), run=board)
    assert flash(job(tmp_path, port), run=board) == 0   # "File exists" from mkdir is not an error


def test_a_missing_port_fails_before_touching_anything(tmp_path):
    board = FakeBoard(tmp_path / "board", "/dev/ttyNOPE")
    with pytest.raises(FlashError, match="cannot open /dev/ttyNOPE"):
        flash(job(tmp_path, "/dev/ttyNOPE"), run=board)
    assert board.log == []


def test_rp2040_firmware_is_not_written_with_esptool(tmp_path, port):
    j = job(tmp_path, port, firmware=tmp_path / "fw.uf2")
    j.board = "rp2040w"
    with pytest.raises(FlashError, match="uf2"):
        flash(j, dry_run=True)
