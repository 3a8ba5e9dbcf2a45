#!/usr/bin/env bash
# Create/refresh the Flower benchmark venv at <repo>/.venv-flwr (idempotent).
#   bash benchmarks/setup_flower.sh            # uses python3.11 / python3 on PATH
#   PYTHON=/path/to/python3.11 bash benchmarks/setup_flower.sh
# Installs flwr[simulation]==1.41.0 (pulls Ray) + numpy + psutil, and semifl itself
# (editable, --no-deps) when the repo root has a pyproject.toml. Without one,
# benchmarks/flower_fl_baseline.py puts <repo>/host on sys.path itself.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-flwr"
FLWR_SPEC="flwr[simulation]==1.41.0"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [[ -x "$VENV/bin/python" ]]; then
  echo "venv: $VENV exists ($("$VENV/bin/python" --version 2>&1))"
else
  echo "venv: creating $VENV with $PY ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
VPY="$VENV/bin/python"

have_flwr="$("$VPY" -c 'import flwr, ray; print(flwr.__version__)' 2>/dev/null || true)"
if [[ "$have_flwr" == "1.41.0" ]]; then
  echo "flwr: 1.41.0 with ray already installed"
else
  echo "flwr: installing $FLWR_SPEC numpy psutil (found: '${have_flwr:-none}')"
  t0=$(date +%s)
  "$VPY" -m pip install --quiet "$FLWR_SPEC" numpy psutil
  echo "flwr: installed in $(( $(date +%s) - t0 )) s"
fi

semifl_at="$(cd / && "$VPY" -c 'import os, semifl; print(os.path.dirname(os.path.abspath(semifl.__file__)))' 2>/dev/null || true)"
if [[ -f "$REPO/pyproject.toml" && "$semifl_at" == "$REPO/host/semifl" ]]; then
  echo "semifl: already installed (editable) from $semifl_at"
elif [[ -f "$REPO/pyproject.toml" ]]; then
  echo "semifl: pip install --no-deps -e $REPO"
  "$VPY" -m pip install --quiet --no-deps -e "$REPO"
else
  echo "semifl: no $REPO/pyproject.toml yet; the benchmark adds $REPO/host to sys.path"
fi

"$VPY" - <<'PY'
import flwr, ray, numpy
print(f"ok: flwr {flwr.__version__}, ray {ray.__version__}, numpy {numpy.__version__}")
PY
