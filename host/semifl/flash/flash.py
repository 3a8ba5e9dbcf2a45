"""`semifl flash`: put the MCU node on a board over its serial port and prove it landed.

Steps, each an external command a user could type (`--dry-run` prints exactly these, one per line):
1. optionally erase and write a MicroPython firmware image (esptool; ESP32 family only),
2. copy the .mpy build, boot.py/main.py and the device's config.json (mpremote),
3. read every file's SHA-256 back from the board (mpremote exec) and compare with the build manifest,
4. reset the board.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .build import build_app

# where MicroPython's image goes in flash (micropython.org/download/<board>)
FIRMWARE_OFFSET = {"esp32": "0x1000", "esp32s3": "0x0"}
CHIP = {"esp32": "esp32", "esp32s3": "esp32s3"}

# read-back on the board, streamed in 512-byte blocks (a data file is megabytes, the heap is not);
# one line so `--dry-run` prints one command per line
_VERIFY_BODY = ('import hashlib,binascii\\ndef h(p):\\n s=hashlib.sha256()\\n try:\\n  f=open(p,"rb")\\n'
                ' except OSError:\\n  return "missing"\\n while 1:\\n  b=f.read(512)\\n  if not b:\\n   break\\n'
                '  s.update(b)\\n f.close()\\n return binascii.hexlify(s.digest()).decode()\\nfor p in %s:\\n print(p,h(p))')


def verify_script(paths: list[str]) -> str:
    """One line of MicroPython: exec('<body with \\n escapes>'), no single quote inside (clean in a shell)."""
    return "exec('%s')" % (_VERIFY_BODY % json.dumps(paths),)


class FlashError(RuntimeError):
    pass


@dataclass
class FlashJob:
    port: str
    board: str
    device_id: str
    build: Path                   # where the app is built and config.json written
    broker: str                   # the host's broker as the board reaches it; no default to guess
    wifi_ssid: str
    wifi_password: str = ""
    firmware: Path | None = None  # a MicroPython image to write first (erases the flash)
    samples: Path | None = None   # the sensor's data files to put in flash (n x 784 uint8, n uint8)
    labels: Path | None = None
    phases: bool = False          # the node marks phases for a power meter (the HIL bench)


def device_config(job: FlashJob) -> dict:
    cfg = {"id": job.device_id, "board": job.board, "broker": job.broker, "wifi_ssid": job.wifi_ssid,
           "wifi_password": job.wifi_password, "samples": "samples.bin", "labels": "labels.bin", "max_chunk": 4096}
    if job.phases:
        cfg["phases"] = True
    return cfg


def prepare(job: FlashJob) -> dict[str, str]:
    """Build the app for the board, add config.json and the data files; returns the manifest
    {path on the board: sha256} of everything that will be copied."""
    from .build import MARCH

    if job.board not in MARCH or job.board == "unix":
        raise FlashError(f"unknown board {job.board!r}; choose from {sorted(b for b in MARCH if b != 'unix')}")
    import hashlib

    app = job.build / "app"
    manifest = build_app(app, job.board)
    extra = {"config.json": json.dumps(device_config(job), indent=1).encode()}
    for src, name in ((job.samples, "samples.bin"), (job.labels, "labels.bin")):
        if src is not None:
            extra[name] = Path(src).read_bytes()
    for name, data in extra.items():
        (app / name).write_bytes(data)
        manifest[name] = hashlib.sha256(data).hexdigest()
    return dict(sorted(manifest.items()))


def commands(job: FlashJob, manifest: dict[str, str]) -> list[list[str]]:
    mp = ["mpremote", "connect", job.port]
    out: list[list[str]] = []
    if job.firmware is not None:
        if job.board not in FIRMWARE_OFFSET:
            raise FlashError(f"writing firmware to {job.board} is not done with esptool (RP2040: copy the .uf2 "
                             "to the RPI-RP2 drive); flash the app only")
        esp = ["esptool", "--chip", CHIP[job.board], "--port", job.port]
        out.append(esp + ["erase-flash"])
        out.append(esp + ["--baud", "460800", "write-flash", "-z", FIRMWARE_OFFSET[job.board], str(job.firmware)])
    app = job.build / "app"
    dirs = {str(a) for p in manifest for a in Path(p).parents if a != Path(".")}
    for d in sorted(dirs, key=lambda d: (d.count("/"), d)):   # parents first
        out.append(mp + ["fs", "mkdir", f":{d}"])
    for p in manifest:
        out.append(mp + ["fs", "cp", str(app / p), f":{p}"])
    out.append(mp + ["exec", verify_script(list(manifest))])
    out.append(mp + ["reset"])
    return out


def verify_output(text: str, manifest: dict[str, str]) -> list[str]:
    """What the board's hashes say is wrong: [] when every file is there with the built contents."""
    got = dict(line.split(" ", 1) for line in text.strip().splitlines() if " " in line)
    bad = []
    for p, h in manifest.items():
        if got.get(p) != h:
            bad.append(f"{p}: board has {got.get(p, 'nothing')}, built {h[:12]}…")
    return bad


def flash(job: FlashJob, dry_run: bool = False, echo=print, run=subprocess.run) -> int:
    manifest = prepare(job)
    cmds = commands(job, manifest)
    if dry_run:
        for c in cmds:
            echo(shlex.join(c))
        return 0
    import serial  # pyserial: fail early and clearly when the port is absent or busy

    try:
        serial.Serial(job.port, 115200, timeout=0.1).close()
    except serial.SerialException as e:
        raise FlashError(f"cannot open {job.port}: {e}") from e
    for c in cmds:
        mkdir = c[-3:-1] == ["fs", "mkdir"]
        r = run(c, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 and not (mkdir and "exist" in (r.stdout + r.stderr).lower()):
            raise FlashError(f"{shlex.join(c[:8])} … failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")
        if c[-2] == "exec":
            bad = verify_output(r.stdout, manifest)
            if bad:
                raise FlashError("read-back mismatch: " + "; ".join(bad))
            echo(f"verified {len(manifest)} files on {job.port} by SHA-256")
    return 0
