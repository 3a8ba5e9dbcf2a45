#!/usr/bin/env bash
# Installs what semifl needs on a fresh Debian/Ubuntu machine: Debian's Fashion-MNIST (the data of the
# main job), the package itself, and with --dev Mosquitto (the tests' external broker) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
apt_pkgs="dataset-fashion-mnist"
[ $dev = 1 ] && apt_pkgs="$apt_pkgs mosquitto"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
extra=""
[ $dev = 1 ] && extra="[dev,iotsl]"   # the tests cover the IoTSL generators (torch) too
python3 -m pip install -q --disable-pip-version-check -e ".$extra"
python3 tools/fetch_mplib.py >/dev/null   # umqtt.simple for the MicroPython node (pinned, hash-checked)
echo "semifl installed$([ $dev = 1 ] && echo ' (with test tools and mosquitto)')"
