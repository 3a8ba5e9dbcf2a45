"""A fleet's own trust: a local CA, the broker's server certificate, a client certificate and a random
password per device, and the password file both brokers read (`semifl certs init|issue`).

Layout of a certs folder (private keys and passwords 0600; nothing existing is overwritten unless asked):

    ca.pem  ca.key            the fleet's CA (EC P-256), 10 years; ca.der for MicroPython's mbedtls
    server.pem  server.key    the broker's certificate: SANs localhost, 127.0.0.1 and the hosts given
    host.password             the host service's password (user `semifl-host`)
    devices/<id>.pem|.key     a device's client certificate (CN = its id, which is its MQTT username)
    devices/<id>.password     its password
    edges/<name>.password     an edge's bridge account at the core (user semifl-edge-<name>; `--role edge`)
    workers/<name>.password   a host worker's account (user semifl-worker-<name>; `--role worker`)
    passwd                    user:$7$... lines, the format of `mosquitto_passwd` (PBKDF2-SHA512), read by
                              Mosquitto (`password_file`) and by the embedded broker alike

Passwords are 128-bit random tokens, so the hash guards the file, not a guessable secret.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HOST_USER = "semifl-host"
ROLE_PREFIX = "semifl-"        # accounts of the host's roles; no device id starts so
EDGE_PREFIX = "semifl-edge-"   # an edge's bridge account: semifl-edge-<name> (`semifl certs issue <name> --role edge`)
ROLES = {"edge": EDGE_PREFIX, "worker": "semifl-worker-"}   # role -> its accounts' prefix
# PBKDF2 rounds of a $7$ line (Mosquitto reads the count from the line; mosquitto_passwd writes 101).
# Every password this module makes is a random 128-bit token, which stretching cannot make harder to
# guess; what rounds do cost is every connect's check on the broker (10,000 rounds: ~7 ms of broker CPU
# per connect, 70 s for a fleet of 10,000). So Mosquitto's own count.
ITERATIONS = 101
_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class CertsError(ValueError):
    """A certs folder that is missing, incomplete, or would be overwritten."""


@dataclass(frozen=True)
class Credentials:
    """What one client needs: its user (= MQTT client id), password, and certificate files."""
    user: str
    password: str
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Certs:
    """The files of a certs folder (see the module docstring)."""
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_der(self) -> Path:
        """The CA in DER: what MicroPython's mbedtls loads (`load_verify_locations(cadata=...)`)."""
        return self.dir / "ca.der"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    def device(self, dev_id: str) -> Credentials:
        d = self.dir / "devices"
        pw = d / f"{dev_id}.password"
        if not pw.exists():
            raise CertsError(f"{dev_id} has no credentials in {self.dir} (semifl certs issue {dev_id} --dir {self.dir})")
        cert = d / f"{dev_id}.pem"
        return Credentials(dev_id, pw.read_text().strip(), cert if cert.exists() else None,
                           d / f"{dev_id}.key" if cert.exists() else None)

    def host(self) -> Credentials:
        return Credentials(HOST_USER, (self.dir / "host.password").read_text().strip())

    def check(self) -> "Certs":
        missing = [p.name for p in (self.ca, self.server, self.server_key, self.passwd) if not p.exists()]
        if missing:
            raise CertsError(f"{self.dir} is not a certs folder (no {', '.join(missing)}); "
                             f"create one with `semifl certs init --dir {self.dir}`")
        return self


# -- passwords ---------------------------------------------------------------------------------------

def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto's `$7$` line value: PBKDF2-HMAC-SHA512 over a 12-byte salt."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `$7$` value; False for any other format."""
    try:
        _, alg, iterations, salt, digest = stored.split("$")
        if alg != "7":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def read_passwd(path: Path) -> dict[str, str]:
    """{user: hash} of a password file (comments and malformed lines skipped)."""
    users = {}
    for line in Path(path).read_text().splitlines():
        user, sep, value = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            users[user] = value
    return users


def set_password(path: Path, user: str, password: str) -> None:
    """Add or replace `user`'s line in the password file (created 0600)."""
    set_passwords(path, {user: password})


def set_passwords(path: Path, passwords: dict[str, str]) -> None:
    """Add or replace several users' lines in one rewrite of the password file (a fleet of 10,000 in
    one write, not 10,000 rewrites of a growing file)."""
    users = read_passwd(path) if Path(path).exists() else {}
    users.update({u: hash_password(pw) for u, pw in passwords.items()})
    _write_private(Path(path), "".join(f"{u}:{h}\n" for u, h in users.items()).encode(), replace=True)


# -- certificates ------------------------------------------------------------------------------------

def _write_private(path: Path, data: bytes, replace: bool = False) -> None:
    """Write a secret 0600 from the start (never world-readable for an instant)."""
    if path.exists() and not replace:
        raise CertsError(f"{path} exists; not overwritten")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load(certs: Certs):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return (x509.load_pem_x509_certificate(certs.ca.read_bytes()),
            serialization.load_pem_private_key(certs.ca_key.read_bytes(), None))


def _sign(subject_cn: str, key, ca_cert, ca_key, days: int, *, ca: bool = False, server_names=(), client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "semifl fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_cert.subject if ca_cert else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                   else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    if server_names:
        sans = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key or key, hashes.SHA256())


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def init(folder: str | Path, hosts=(), overwrite: bool = False) -> Certs:
    """A new certs folder: CA, server certificate (localhost, 127.0.0.1 and `hosts`), the host's
    password. An existing CA is kept (only the server certificate is re-made, e.g. for new hosts)
    unless `overwrite`."""
    certs = Certs(Path(folder))
    certs.dir.mkdir(parents=True, exist_ok=True)
    (certs.dir / "devices").mkdir(exist_ok=True)
    if overwrite or not certs.ca_key.exists():
        if certs.ca.exists() and not overwrite:
            raise CertsError(f"{certs.ca} exists without its key; not overwritten (give overwrite to make a new CA)")
        key = _key()
        cert = _sign("semifl fleet CA", key, None, None, 3650, ca=True)
        _write_private(certs.ca_key, _pem_key(key), replace=overwrite)
        certs.ca.write_bytes(_pem(cert))
    ca_cert, ca_key = _load(certs)
    if not certs.ca_der.exists() or overwrite:
        from cryptography.hazmat.primitives import serialization

        certs.ca_der.write_bytes(ca_cert.public_bytes(serialization.Encoding.DER))
    names = list(dict.fromkeys(["localhost", "127.0.0.1", *hosts]))
    if certs.server.exists() and certs.server_key.exists() and not overwrite and not hosts:
        pass   # kept: re-running init adds nothing (give hosts to re-issue it for them, with its key)
    else:
        from cryptography.hazmat.primitives import serialization

        if certs.server_key.exists() and not overwrite:
            key = serialization.load_pem_private_key(certs.server_key.read_bytes(), None)
        else:
            key = _key()
            _write_private(certs.server_key, _pem_key(key), replace=True)
        certs.server.write_bytes(_pem(_sign(names[-1] if hosts else "localhost", key, ca_cert, ca_key, 825,
                                            server_names=names)))
    if overwrite or not (certs.dir / "host.password").exists():
        password = secrets.token_urlsafe(16)
        _write_private(certs.dir / "host.password", password.encode() + b"\n", replace=True)
        set_password(certs.passwd, HOST_USER, password)
    return certs


def issue(folder: str | Path, dev_id: str, certificate: bool = True, overwrite: bool = False,
          _batch: dict | None = None) -> Credentials:
    """A device's credentials: a random password (added to `passwd`) and, with `certificate`, a
    client certificate whose CN is its id. An existing device's are returned unchanged unless `overwrite`.
    (_batch: collects the new passwords for one rewrite of `passwd` by the caller: `fleet_credentials`.)"""
    if not dev_id or not set(dev_id) <= _ID_OK or dev_id.startswith(ROLE_PREFIX):
        raise CertsError(f"device id {dev_id!r}: letters, digits, '-', '_', '.' only, and not {ROLE_PREFIX}... "
                         f"(the host's roles: {HOST_USER}, {EDGE_PREFIX}<name>)")
    certs = Certs(Path(folder)).check()
    d = certs.dir / "devices"
    d.mkdir(exist_ok=True)
    pw_file = d / f"{dev_id}.password"
    if pw_file.exists() and not overwrite:
        return certs.device(dev_id)
    password = secrets.token_urlsafe(16)
    _write_private(pw_file, password.encode() + b"\n", replace=True)
    if _batch is not None:
        _batch[dev_id] = password
    else:
        set_password(certs.passwd, dev_id, password)
    if certificate:
        ca_cert, ca_key = _load(certs)
        key = _key()
        _write_private(d / f"{dev_id}.key", _pem_key(key), replace=True)
        (d / f"{dev_id}.pem").write_bytes(_pem(_sign(dev_id, key, ca_cert, ca_key, 825, client=True)))
    return certs.device(dev_id)


def issue_role(folder: str | Path, name: str, role: str, overwrite: bool = False) -> Credentials:
    """An account of one of the host's roles (ROLES): an edge's bridge at the core (`semifl edge`) or a
    host worker (`semifl worker`): user semifl-<role>-<name>, a random password in <role>s/<name>.password,
    added to `passwd`. Its topics: the ACL block `semifl certs issue --role` prints (service/edge.py).
    An existing one is returned unchanged unless `overwrite`."""
    if role not in ROLES:
        raise CertsError(f"role {role!r}: one of {', '.join(ROLES)}")
    if not name or not set(name) <= _ID_OK:
        raise CertsError(f"{role} name {name!r}: letters, digits, '-', '_', '.' only")
    certs = Certs(Path(folder)).check()
    d = certs.dir / f"{role}s"
    d.mkdir(exist_ok=True)
    pw_file, user = d / f"{name}.password", ROLES[role] + name
    if pw_file.exists() and not overwrite:
        return Credentials(user, pw_file.read_text().strip())
    password = secrets.token_urlsafe(16)
    _write_private(pw_file, password.encode() + b"\n", replace=True)
    set_password(certs.passwd, user, password)
    return Credentials(user, password)


def fleet_credentials(folder: str | Path, device_ids, certificates: bool = False, init_ca: bool = True) -> Certs:
    """A fleet's accounts in one call (`semifl run`): a certs folder (made, with a CA and the host's
    account, unless `init_ca` is False: then it must exist) and one account per device id, those it
    has already kept unchanged."""
    certs = init(folder) if init_ca else Certs(Path(folder)).check()
    new: dict[str, str] = {}
    try:
        for dev_id in device_ids:
            issue(folder, dev_id, certificate=certificates, _batch=new)
    finally:   # what was issued is in passwd, even when a later id is refused
        if new:
            set_passwords(certs.passwd, new)
    return certs
