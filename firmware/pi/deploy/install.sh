#!/usr/bin/env bash
# Installs the semifl Pi agent on Raspberry Pi OS (arm64, Debian bookworm) as a systemd service.
# No TensorFlow: the agent trains in numpy and talks MQTT with paho.
#   sudo bash firmware/pi/deploy/install.sh [--config my-agent.json]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
config="$here/agent.example.json"
[ "${1:-}" = "--config" ] && config="$2"
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)"; exit 1; }
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
id semifl >/dev/null 2>&1 || useradd --system --home /var/lib/semifl --shell /usr/sbin/nologin semifl
install -d -o semifl -g semifl /var/lib/semifl
install -d /etc/semifl /opt/semifl
python3 -m venv /opt/semifl/venv
# the agent's own needs only: the host's extras (broker, plots, MicroPython) stay off the board
/opt/semifl/venv/bin/pip install -q "numpy>=1.24" "paho-mqtt>=2,<3"
/opt/semifl/venv/bin/pip install -q --no-deps "$repo"
# LiteRT runs the exported int8 model (config "tflite"); training does not need it
/opt/semifl/venv/bin/pip install -q ai-edge-litert || echo "ai-edge-litert unavailable: int8 inference off"
[ -f /etc/semifl/agent.json ] || install -m 0640 -g semifl "$config" /etc/semifl/agent.json
install -m 0644 "$here/semifl-agent.service" /etc/systemd/system/semifl-agent.service
systemctl daemon-reload
systemctl enable --now semifl-agent
echo "semifl-agent installed; edit /etc/semifl/agent.json (id, broker, data) and: systemctl restart semifl-agent"
