"""Fetch the MicroPython libraries the MCU node imports, from the package registry, at build time.

micropython-lib's packages are on PyPI as sdists without setup.py or pyproject.toml, so `pip download`
refuses them ("does not appear to be a Python project") and there is no wheel. This asks pip itself
for each pinned sdist instead: pip's own finder and HTTP session, built from pip's configuration (pip.conf,
PIP_* variables: index-url, extra-index-url, find-links, proxy, cert, trusted-host, retries), so a mirror,
a proxy or an offline --find-links folder that works for `pip install` works here. Each sdist's SHA-256
is checked and its modules are unpacked into firmware/micropython/lib/, the folder a board's
`mip install` fills (and that `semifl flash` copies). Third-party code is fetched, never committed
(lib/ is git-ignored).

    python tools/fetch_mplib.py                              # no-op when present and intact
    PIP_FIND_LINKS=DIR python tools/fetch_mplib.py           # offline: DIR holds the pinned .tar.gz
"""
from __future__ import annotations

import hashlib
import io
import logging
import sys
import tarfile
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "firmware" / "micropython" / "lib"

# package -> (version, sdist sha256, modules wanted from it)
PINNED = {
    "micropython-umqtt.simple": ("1.3.4", "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
                                 ["umqtt/simple.py"]),
}


class FetchError(RuntimeError):
    pass


def download_with_pip(package: str, version: str) -> bytes:
    """The pinned sdist's bytes, found and downloaded by pip's finder and session under pip's config."""
    logging.getLogger("pip").setLevel(logging.ERROR)   # pip warns per unreachable index; we say it once
    try:
        from pip._internal.commands.download import DownloadCommand
        from pip._vendor.packaging.specifiers import SpecifierSet
    except ImportError as e:   # pragma: no cover - no pip, or a pip without these modules
        raise FetchError(f"pip is needed to fetch {package} ({e})") from None
    cmd = DownloadCommand("download", "download")
    options, _ = cmd.parse_args(["--no-deps", "--no-binary", ":all:", f"{package}=={version}"])
    with cmd.main_context():
        session = cmd.get_default_session(options)
        finder = cmd._build_package_finder(options=options, session=session)
        best = finder.find_best_candidate(package, SpecifierSet(f"=={version}")).best_candidate
        if best is None:
            where = ", ".join([options.index_url] * (not options.no_index) + options.extra_index_urls
                              + options.find_links) or "no index"
            raise FetchError(f"pip found no {package} {version} sdist in {where}")
        resp = session.get(best.link.url, timeout=options.timeout)
        resp.raise_for_status()
        return resp.content


def fetch(package: str, version: str, sha256: str, modules: list[str], lib: Path | None = None) -> list[Path]:
    lib = LIB if lib is None else lib
    stamp = lib / f".{package}-{version}.sha256"
    targets = [lib / m for m in modules]
    if stamp.exists() and stamp.read_text().strip() == sha256 and all(t.exists() for t in targets):
        return targets
    blob = download_with_pip(package, version)
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise FetchError(f"{package} {version}: sha256 {got}, expected {sha256}")
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
        try:
            targets = fetch(package, version, sha256, modules)
        except Exception as e:   # one line, no traceback: offline, proxy, index or hash
            reason = " ".join(str(e).split()) or type(e).__name__
            hint = "" if "sha256" in reason else (
                f"; offline? put {package}-{version}.tar.gz (sha256 {sha256[:12]}...) in DIR and run "
                f"PIP_FIND_LINKS=DIR python tools/fetch_mplib.py")
            print(f"fetch_mplib: cannot fetch {package} {version} through pip: {reason}{hint}", file=sys.stderr)
            return 1
        for t in targets:
            print(f"{package} {version}: {t.relative_to(LIB.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
