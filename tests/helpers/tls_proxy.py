"""A real TLS-terminating, login-checking reverse proxy (Debian's nginx) in front of the local Elasticsearch.

The local node runs with security off, so on its own it never checks a certificate or a password. This
proxy does what a secured cluster does at its edge: it speaks only HTTPS with a certificate signed by a
CA made here, answers 401 unless the request carries ``Authorization: Basic <user:password>`` for its
one user or ``Authorization: ApiKey <key>`` for its one key, and logs every request with the kind of
login that was accepted, so a test can prove its requests went through it.

Everything lives in one temporary folder: config, CA and certificate, pid file, logs and nginx's
temporary paths. nginx runs in the foreground as a child process, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

NGINX_CANDIDATES = ("/usr/sbin/nginx", "nginx")


def nginx_binary() -> str:
    """Path of Debian's nginx (package nginx-light), or an error naming the package."""
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("nginx is not installed; install Debian's nginx-light (apt-get install nginx-light)")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate (PEM file) and its key, made for one test run."""

    cert_path: Path
    key: object = field(repr=False)
    cert: object = field(repr=False)


def make_ca(folder: Path, name: str = "quoteflow test CA") -> CertificateAuthority:
    """A self-signed CA, valid for a day, written to ``folder/<name>.crt``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name.replace(' ', '-')}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(cert_path=path, key=key, cert=cert)


def make_server_cert(ca: CertificateAuthority, folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A server certificate for ``host`` (IP and DNS name ``localhost``) signed by ``ca``: (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_cert = ca.cert
    assert isinstance(ca_cert, x509.Certificate)
    ca_key = ca.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 128; }}
http {{
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    map_hash_bucket_size 256;
    # Which login a request carried: exactly the one user's Basic credentials, or the one API key.
    map $http_authorization $quoteflow_login {{
        default "";
        "Basic {basic}" basic;
        "ApiKey {api_key}" api_key;
    }}
    log_format quoteflow '$request_method $uri $status login=$quoteflow_login';
    access_log {folder}/access.log quoteflow;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 200m;
        location / {{
            if ($quoteflow_login = "") {{
                add_header WWW-Authenticate 'Basic realm="quoteflow test", ApiKey' always;
                return 401 '{{"error":"missing or wrong credentials (test proxy)","status":401}}';
            }}
            proxy_set_header Authorization "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {upstream};
        }}
    }}
}}
"""


@dataclass
class TlsProxy:
    """nginx on ``https://127.0.0.1:<port>`` checking one user and one API key, proxying to ``upstream``."""

    folder: Path
    upstream: str
    ca: CertificateAuthority
    user: str = "quoteflow"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    api_key: str = field(default_factory=lambda: base64.b64encode(f"qf-test:{secrets.token_hex(16)}".encode()).decode())
    port: int = field(default_factory=spare_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    def access_lines(self) -> list[str]:
        """The access log's lines so far (``METHOD /path STATUS login=basic|api_key|``)."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def start(self, timeout_s: float = 15.0) -> TlsProxy:
        """Write the config and certificate, start nginx in the foreground, wait until it accepts TLS."""
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        cert, key = make_server_cert(self.ca, self.folder)
        basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        # As root, nginx's workers would switch to nobody, who cannot read a private temporary folder.
        user = "user root;" if os.geteuid() == 0 else ""
        upstream = urlsplit(self.upstream)
        conf = self.folder / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user=user,
                folder=self.folder,
                basic=basic,
                api_key=self.api_key,
                port=self.port,
                cert=cert,
                key=key,
                upstream=f"http://{upstream.hostname}:{upstream.port}",
            )
        )
        conf.chmod(0o600)
        binary = nginx_binary()
        check = subprocess.run(
            [binary, "-t", "-q", "-p", str(self.folder), "-c", str(conf), "-e", str(self.folder / "error.log")],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected its test config: {check.stderr}")
        self.process = subprocess.Popen(
            [binary, "-p", str(self.folder), "-c", str(conf), "-e", str(self.folder / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port} within {timeout_s} s: {self.error_log()}")

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the nginx this proxy started (its master; the workers follow it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A CA and a 127.0.0.1 server certificate, made for the test module."""
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority, es_url: str) -> Iterator[TlsProxy]:
    """nginx terminating TLS and checking logins in front of the local Elasticsearch."""
    server = TlsProxy(tmp_path_factory.mktemp("nginx"), es_url, ca).start()
    yield server
    server.stop()
