"""Real Docker registries: Debian's docker-registry on loopback ports.

`start_registry(workdir, auth=None|"basic"|"token", users=...)` starts one and
waits until it answers /v2/ (failing with its log if it does not within 15 s).
"token" also runs a small token server in a thread that checks Basic
credentials and signs JWTs with a key and self-signed certificate made here.
The authenticated ones know the user alice/wonderland (TEST_USERS) unless told others.
The tests' fixtures over it are in tests/support/registry.py.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import bcrypt
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 15.0
TEST_USERS = {"alice": "wonderland"}
SERVICE = "imagegw-test-registry"
ISSUER = "imagegw-test-token-issuer"


@dataclass
class RegistryServer:
    """A running docker-registry; `url` is "http://127.0.0.1:PORT", `host` "127.0.0.1:PORT"."""

    url: str
    host: str
    log_path: Path
    auth: str | None
    users: dict[str, str]
    process: subprocess.Popen[bytes]
    token_server: TokenServer | None = None
    _log_file: object = field(default=None, repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.token_server is not None:
            self.token_server.stop()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_registry(
    workdir: Path, *, auth: str | None = None, users: dict[str, str] | None = None
) -> RegistryServer:
    """Starts docker-registry with storage under `workdir`; auth None, "basic" or "token"."""
    if auth not in (None, "basic", "token"):
        raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
    users = dict(users if users is not None else (TEST_USERS if auth else {}))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token_server = None
    auth_yaml = ""
    if auth == "basic":
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(
            f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for name, pw in users.items()
        ))
        auth_yaml = f"auth:\n  htpasswd:\n    realm: imagegw-test\n    path: {htpasswd}\n"
    elif auth == "token":
        token_server = TokenServer(users, workdir)
        auth_yaml = (
            "auth:\n  token:\n"
            f"    realm: {token_server.url}/token\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {token_server.cert_path}\n"
        )
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth_yaml
    )
    log_path = workdir / "registry.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by RegistryServer.stop
    process = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(config)],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    server = RegistryServer(
        url=f"http://127.0.0.1:{port}", host=f"127.0.0.1:{port}", log_path=log_path,
        auth=auth, users=users, process=process, token_server=token_server, _log_file=log_file,
    )
    try:
        _wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: RegistryServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=2)) as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            try:
                response = http.request("GET", server.url + "/v2/")
                if response.status in (200, 401):
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(
        f"docker-registry did not answer on {server.url} within {START_TIMEOUT}s "
        f"(exit code {server.process.poll()}); its log:\n{server.log()}"
    )


# -- the token server ---------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """Issues registry JWTs for Basic-authenticated users (and empty ones for anonymous)."""

    def __init__(self, users: dict[str, str], workdir: Path) -> None:
        self.users = dict(users)
        self.requests: list[dict[str, str]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = _self_signed(self._key)
        self.cert_path = workdir / "token-root.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def user_of(self, authorization: str | None) -> str | None | Literal[False]:
        """The user name, None for anonymous, False for wrong credentials."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            name, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return name if self.users.get(name) == password and name else False

    def issue(self, user: str | None, service: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if user is not None and kind == "repository" and name:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": user or "", "aud": service, "exp": now + 600,
            "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8), "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode("ascii")]}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            query = parse_qs(urlsplit(self.path).query)
            authorization = self.headers.get("Authorization")
            user = server.user_of(authorization)
            server.requests.append({"path": self.path, "authorization": authorization or ""})
            if user is False:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                              "message": "invalid credentials"}]})
                return
            token = server.issue(user or None, query.get("service", [""])[0],
                                 query.get("scope", []))
            self._reply(200, {"token": token, "access_token": token, "expires_in": 600})

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagegw test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
