"""Stand-ins for the plugin's tests behind a balancer (issue 15): a fake backend that behaves as a pool's
worker (named in its upgrade answer, healthy on /healthz, shutting down with "going away" or dying without a
word, serving TLS), and a certificate authority of a studio's own, made with the openssl command."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from krita_plugin.network import GOING_AWAY, SESSION_HEADER, WORKER_HEADER
from tests.plugin.fake_backend import FakeBackend


@dataclass
class Worker(FakeBackend):
    """A fake backend as a balancer's worker: its answer to the upgrade names it (as deploy/haproxy.cfg's
    `http-response set-header` does), it records each upgrade's session header, answers `GET /healthz` as a
    ready worker, can serve TLS, and can shut down the way a draining backend does (close code 1001, then
    stop listening) or die without a word."""

    name: str = "gpu0"
    tls: ssl.SSLContext | None = None
    full: bool = False  # answers every upgrade with 503, as a backend at its cap or a balancer with none up
    session_keys: list[str | None] = field(default_factory=list)

    def start(self) -> Worker:
        super().start()
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():  # stopping twice is fine
            super().stop()

    def go_away(self) -> None:
        """Every connection closed with "going away", then the port closed."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
        future.result(5)
        self.stop()

    def crash(self) -> None:
        """Gone without a goodbye (killed): connections cut, no close frame."""
        assert self._loop is not None
        for socket in list(self._sockets):
            self._loop.call_soon_threadsafe(socket.transport.abort)
        self.stop()

    async def _close_all(self) -> None:
        for socket in list(self._sockets):
            await socket.close(GOING_AWAY, "going away")

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._sockets: set[Any] = set()
        async with serve(
            self._tracked, "127.0.0.1", self.port, max_size=None, compression=None,
            process_request=self._before_upgrade, process_response=self._name_it, ssl=self.tls,
        ) as server:  # fmt: skip
            self._started.set()
            await self._stop.wait()
            server.close()

    async def _tracked(self, socket: Any) -> None:
        self.session_keys.append(socket.request.headers.get(SESSION_HEADER))
        self._sockets.add(socket)
        try:
            await self._handle(socket)
        finally:
            self._sockets.discard(socket)

    def _before_upgrade(self, connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            body = json.dumps({"state": "ready", "models": {}, "device": "cpu", "message": "Ready."}).encode()
            headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return Response(HTTPStatus.OK.value, "OK", headers, body)
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "full\n") if self.full else None

    def _name_it(self, _connection: Any, _request: Any, response: Any) -> Any:
        response.headers[WORKER_HEADER] = self.name
        return response


@dataclass
class Certificates:
    ca: Path  # the studio's own certificate authority (PEM)
    cert: Path  # a server certificate for localhost and 127.0.0.1, signed by it (PEM)
    key: Path  # its private key (PEM)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def combined(self) -> Path:
        """The certificate and its key in one PEM, as HAProxy's `crt` takes them."""
        path = self.cert.with_name("server-with-key.pem")
        path.write_text(self.cert.read_text() + self.key.read_text())
        return path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_certificates(folder: Path) -> Certificates:
    """A CA and a server certificate it signed, with the extensions strict verifiers ask for."""

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], cwd=folder, check=True, capture_output=True, timeout=30)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_extensions = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Studio CA", *ca_extensions)  # fmt: skip
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
