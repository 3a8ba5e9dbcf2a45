"""The Pi agent as installed on a board: it needs numpy and paho only (install.sh installs nothing
else), and the systemd unit, the install script and the example config agree with each other."""
import configparser
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "firmware" / "pi" / "deploy"
HOST_ONLY = {"amqtt", "matplotlib", "rich", "threadpoolctl", "tensorflow", "ai_edge_litert", "tflite_micro", "serial"}


def test_the_agent_imports_nothing_a_board_does_not_get():
    code = ("import sys, semifl_agent.agent, semifl.device; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not mods & HOST_ONLY, mods & HOST_ONLY
    assert {"numpy", "paho", "semifl_agent", "semifl"} <= mods


def test_unit_script_and_example_config_agree():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((DEPLOY / "semifl-agent.service").read_text())
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[0] == "/opt/semifl/venv/bin/semifl-agent" and exec_start[1:] == ["--config", "/etc/semifl/agent.json"]
    script = (DEPLOY / "install.sh").read_text()
    assert "/opt/semifl/venv" in script and "/etc/semifl/agent.json" in script and "semifl-agent.service" in script
    assert subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")]).returncode == 0
    cfg = json.loads((DEPLOY / "agent.example.json").read_text())
    assert {"id", "broker", "data"} <= set(cfg) and cfg["broker"].startswith("mqtt://")
    assert "semifl-agent = \"semifl_agent.agent:main\"" in (REPO / "pyproject.toml").read_text()
