"""A certificate repository (x5u host) and CRL server, for tests, benchmarks and the demo.

Not a production server. :class:`Repository` serves ``path -> Resource`` over HTTPS (TLS
from :meth:`verifier.testing.pki.TestPKI.tls_server`) and over plain HTTP (CRLs, RFC 5280),
counts the requests per path, and misbehaves on demand: redirects, a stalled or slow body,
an endless body, any status, any headers. Use it as::

    async with Repository.create(pki) as repo:   # 127.0.0.1, ephemeral ports
        repo.put("/sp.pem", pki.signer.chain_pem())
        url = repo.url("/sp.pem")                 # https://127.0.0.1:PORT/sp.pem
        ... repo.ca_pem                           # what the client must trust
        assert repo.counts["/sp.pem"] == 1
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web

from ..settings import Settings, load_settings
from .pki import TestPKI, pem

__all__ = ["Behaviour", "Repository", "Resource"]

Behaviour = Literal["normal", "stall", "slow", "endless"]


@dataclass(slots=True, kw_only=True)
class Resource:
    """What one path answers. ``stall`` sends the headers and the first bytes, then nothing;
    ``slow`` sends the body one small piece every ``delay`` seconds; ``endless`` streams
    without end; ``delay`` (normal) waits before answering."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/pem-certificate-chain"
    headers: dict[str, str] = field(default_factory=dict)
    behaviour: Behaviour = "normal"
    delay: float = 0.0


class Repository:
    """An HTTPS (and plain HTTP) server of resources that counts its requests.

    Build it with :meth:`create` (TLS from a TestPKI) or the constructor (``tls`` is
    ``(server chain PEM, key PEM)``, or None for plain HTTP only); start it with
    ``async with`` or :meth:`start`, which binds ephemeral ports on ``host``.
    """

    def __init__(
        self,
        *,
        tls: tuple[bytes, bytes] | None,
        ca_pem: bytes = b"",
        host: str = "127.0.0.1",
        plain_http: bool = True,
    ) -> None:
        self.resources: dict[str, Resource] = {}
        self.counts: Counter[str] = Counter()
        self.ca_pem = ca_pem
        self.host = host
        self._tls = tls
        self._plain_http = plain_http
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.http_port = 0

    @classmethod
    def create(cls, pki: TestPKI, *, host: str = "127.0.0.1") -> Repository:
        """A repository with a TLS certificate for 127.0.0.1, localhost and ::1."""
        ca_pem, chain_pem, key_pem = pki.tls_server()
        return cls(tls=(chain_pem, key_pem), ca_pem=ca_pem, host=host)

    def service_settings(
        self, pki: TestPKI, directory: Path, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings of a service that trusts ``pki``'s root and fetches x5u from this
        repository (its TLS CA and port, 127.0.0.1 allowed, no CRL checks), ``overrides``
        (:func:`verifier.settings.load_settings` keys) on top. Writes ``root.pem`` and
        ``ca.pem`` in ``directory``."""
        (directory / "root.pem").write_bytes(pem(pki.root.cert))
        (directory / "ca.pem").write_bytes(self.ca_pem)
        return load_settings(
            overrides={
                "trust_anchors": [str(directory / "root.pem")],
                "http_client.ca_file": str(directory / "ca.pem"),
                "http_client.private_allow": ["127.0.0.1"],
                "http_client.ports": [self.port],
                "x5u.crl_check": False,
                **(overrides or {}),
            }
        )

    # -- content ---------------------------------------------------------------------------

    def put(
        self,
        path: str,
        body: bytes = b"",
        *,
        status: int = 200,
        content_type: str = "application/pem-certificate-chain",
        headers: dict[str, str] | None = None,
        behaviour: Behaviour = "normal",
        delay: float = 0.0,
    ) -> str:
        """Serve ``body`` at ``path``; returns the HTTPS URL."""
        self.resources[path] = Resource(
            body=body,
            status=status,
            content_type=content_type,
            headers=dict(headers or {}),
            behaviour=behaviour,
            delay=delay,
        )
        return self.url(path) if self._tls is not None else self.http_url(path)

    def redirect(self, path: str, location: str, *, status: int = 302) -> str:
        return self.put(path, b"", status=status, headers={"Location": location})

    def _authority(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def url(self, path: str) -> str:
        return f"https://{self._authority(self.port)}{path}"

    def http_url(self, path: str) -> str:
        return f"http://{self._authority(self.http_port)}{path}"

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    # -- serving ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.counts[path] += 1
        resource = self.resources.get(path)
        if resource is None:
            return web.Response(status=404, text="not found", content_type="text/plain")
        if resource.delay and resource.behaviour == "normal":
            await self._pause(resource.delay)
        headers = {"Content-Type": resource.content_type, **resource.headers}
        if resource.behaviour == "normal":
            return web.Response(status=resource.status, body=resource.body, headers=headers)
        response = web.StreamResponse(status=resource.status, headers=headers)
        await response.prepare(request)
        try:
            if resource.behaviour == "stall":
                await response.write(resource.body[:16])
                await self._closing.wait()
            elif resource.behaviour == "slow":
                for i in range(0, len(resource.body), 16):
                    await response.write(resource.body[i : i + 16])
                    if await self._pause(resource.delay or 0.05):
                        break
            else:  # endless
                chunk = b"A" * 4096
                while not self._closing.is_set():
                    await response.write(chunk)
                    await asyncio.sleep(0)
        except (ConnectionError, asyncio.CancelledError):
            return response
        return response

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; True if the server is closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        if self._tls is not None:
            sock = self._listen()
            self.port = sock.getsockname()[1]
            ctx = self._ssl_context(*self._tls)
            await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        if self._plain_http:
            sock = self._listen()
            self.http_port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _ssl_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "server.pem"), Path(tmp, "server.key")
            cert_file.write_bytes(chain_pem)
            key_file.write_bytes(key_pem)
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
