#!/usr/bin/env bash
# Installs semifl on a fresh Debian/Ubuntu machine into the virtualenv .venv of this checkout (Debian's
# own Python refuses system-wide pip installs): Debian's Fashion-MNIST (the main job's data), the
# package, and with --dev Mosquitto (the tests' external broker), RabbitMQ (the clustered one) and the
# test tools. Uses sudo for apt-get when not run as root. Run it again at any time: it installs only
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

apt_install() {
  local missing="" p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  echo "apt-get install$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

apt_pkgs="dataset-fashion-mnist"
# rabbitmq-server (~35 MB with Erlang): tests/test_rabbitmq.py's three-node cluster (tools/rabbitmq/cluster.py)
[ $dev = 1 ] && apt_pkgs="$apt_pkgs mosquitto chromium rabbitmq-server"
apt_install $apt_pkgs

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap apart: python3-venv (and python3.X-venv)
    rm -rf .venv
    v=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$v-venv"
    python3 -m venv .venv
  fi
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
extra=""
if [ $dev = 1 ]; then
  extra="[dev,iotsl]"   # the tests cover the IoTSL generators (torch) too
  # torch's CPU build from PyTorch's index (PyPI's default build for Linux is the CUDA one, several GB);
  # its dependencies come from PyPI below. Without that index (offline mirrors), pip takes torch as usual.
  "${pip[@]}" --no-deps --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" 2>/dev/null ||
    echo "PyTorch's CPU index is not reachable: torch comes from the package index pip is set up with"
fi
"${pip[@]}" -e ".$extra"
.venv/bin/python tools/fetch_mplib.py >/dev/null   # umqtt.simple for the MicroPython node (pinned, hash-checked)
echo "semifl installed in .venv$([ $dev = 1 ] && echo ' with the test tools and mosquitto'); use it with" \
     "'. .venv/bin/activate' or as .venv/bin/semifl"
