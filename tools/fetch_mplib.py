"""Fetch the MicroPython libraries the MCU node imports, from the package registry, at build time.

micropython-lib's packages are on PyPI as sdists without setup.py, so pip cannot install them; this
downloads each pinned sdist, checks its SHA-256 and unpacks its modules into firmware/micropython/lib/,
the folder a board's `mip install` fills (and that `semifl flash` copies). Third-party code is fetched,
never committed (lib/ is git-ignored).

    python tools/fetch_mplib.py            # no-op when present and intact
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "firmware" / "micropython" / "lib"

# package -> (version, sdist sha256, modules wanted from it)
PINNED = {
    "micropython-umqtt.simple": ("1.3.4", "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
                                 ["umqtt/simple.py"]),
}


def sdist_url(package: str, version: str) -> str:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=30) as r:
        info = json.load(r)
    for u in info["releases"].get(version, []):
        if u["packagetype"] == "sdist":
            return u["url"]
    raise RuntimeError(f"{package} {version}: no sdist on PyPI")


def fetch(package: str, version: str, sha256: str, modules: list[str], lib: Path = LIB) -> list[Path]:
    stamp = lib / f".{package}-{version}.sha256"
    targets = [lib / m for m in modules]
    if stamp.exists() and stamp.read_text().strip() == sha256 and all(t.exists() for t in targets):
        return targets
    with urllib.request.urlopen(sdist_url(package, version), timeout=60) as r:
        blob = r.read()
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise RuntimeError(f"{package} {version}: sha256 {got}, expected {sha256}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m, t in zip(modules, targets):
            member = next(x for x in tar.getmembers() if x.name.endswith("/" + m))
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_bytes(tar.extractfile(member).read())
            init = t.parent / "__init__.py"
            if t.parent != lib and not init.exists():
                init.write_bytes(b"")   # the unix port needs the package marker a board's mip also writes
    stamp.write_text(sha256 + "\n")
    return targets


def main() -> int:
    for package, (version, sha256, modules) in PINNED.items():
        for t in fetch(package, version, sha256, modules):
            print(f"{package} {version}: {t.relative_to(LIB.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
