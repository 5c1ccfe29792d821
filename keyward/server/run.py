"""Serving the application: where it listens, TLS, and how uvicorn is set up.

The server listens on loopback unless told otherwise.  On any other address it
insists on TLS: session tokens are bearer credentials and must not cross a network
in clear.  Behind a reverse proxy that terminates TLS, keep the server on loopback
(docs/server.md).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyward.errors import UsageError
from keyward.logs import get_logger

if TYPE_CHECKING:
    from keyward.daemon.metrics import HasCollectors

DEFAULT_LISTEN = "127.0.0.1:8443"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` or ``[IPv6]:PORT``; a host name or address, port 1-65535."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen must be HOST:PORT (e.g. {DEFAULT_LISTEN}), not {text!r}")
    return Listen(host, int(port))


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


def check_tls(listen: Listen, cert: str | None, key: str | None) -> Tls | None:
    """TLS files, both or neither; refuse plain HTTP beyond loopback."""
    if (cert is None) != (key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    if cert is None or key is None:
        if not listen.loopback:
            raise UsageError(
                f"refusing plain HTTP on {listen.host}: give --tls-cert and --tls-key, or listen "
                "on loopback behind a reverse proxy that terminates TLS"
            )
        return None
    tls = Tls(Path(cert), Path(key))
    try:  # fail now, with a clear message, not in uvicorn's start-up
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate and key: {exc}") from None
    return tls


class ToStructlog(logging.Handler):
    """uvicorn's own messages (start-up, shutdown, bad requests) as keyward log lines.

    So the journal gets one format: with ``--log-format json`` every line is JSON.
    """

    def emit(self, record: logging.LogRecord) -> None:
        log = get_logger(component="server")
        level = record.levelname.lower()
        emit = getattr(log, level if level in ("debug", "info", "warning", "error") else "error")
        emit("uvicorn", message=" ".join(record.getMessage().split())[:500])


def route_uvicorn_logs() -> None:
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [ToStructlog()]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(
    app: Any,
    listen: Listen,
    tls: Tls | None,
    metrics: tuple[HasCollectors, socket.socket] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT.  Our own JSON log replaces uvicorn's access log.

    ``metrics``: collectors and a bound loopback socket for ``/metrics``
    (``--metrics-listen``), answered on the same event loop by the daemon's bounded
    responder.
    """
    import uvicorn

    from keyward import event_loop

    route_uvicorn_logs()

    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the client's address is not used for any decision
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if metrics is None:
        server.run()
        return
    from keyward.daemon.metrics import MetricsServer

    collectors, sock = metrics

    async def both() -> None:
        responder = MetricsServer(collectors)
        await responder.start(sock)
        try:
            await server.serve()
        finally:
            await responder.close()

    event_loop.run(both())
