"""Flash: `semifl flash --phases` for the DUT's board. On the simulated bench a dry run (the commands
a real flash runs, and the config.json it would copy); with --hil-port the real thing."""
import json
import os
import shlex
from pathlib import Path

import pytest

from semifl.cli import main as cli


def test_flash_the_dut(hil, tmp_path, capsys):
    args = ["flash", "--port", hil.hil_port or "/dev/ttyUSB0", "--board", hil.hil_board, "--device-id", "mcu-01",
            "--phases", "--build", str(tmp_path / "build")]
    if hil.hil_port is None:
        args += ["--dry-run", "--broker-url", "mqtt://192.0.2.1:1883", "--wifi-ssid", "bench"]
    elif hil.hil_broker_url:
        args += ["--broker-url", hil.hil_broker_url, "--wifi-ssid", os.environ.get("SEMIFL_WIFI_SSID", "")]
    else:
        pytest.fail("a real DUT needs --hil-broker-url: the bench's broker as the board reaches it")
    assert cli(args) == 0
    if hil.hil_port is None:
        cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
        copied = {c[6]: Path(c[5]) for c in cmds if c[3:5] == ["fs", "cp"]}
        cfg = json.loads(copied[":config.json"].read_text())
        assert cfg["id"] == "mcu-01" and cfg["board"] == hil.hil_board and cfg["phases"] is True
        assert {":main.py", ":semifl_node/node.mpy", ":wire.mpy"} <= set(copied)
        assert cmds[-1][3:] == ["reset"]
