"""Run the API with uvicorn: listen, TLS when a certificate is configured, stop on SIGTERM.

The server binds its socket itself, so ``port=0`` takes a free port and the address it
announces is the real one (the tests start ``meterlake serve --port 0`` and read it).
One process serves: the endpoints run in uvicorn's thread pool, and the Polars scans behind
them release the GIL. The newest billing period is read into memory in the background as the
server starts, so the billing system's first pull does not wait for it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from meterlake.api.app import create_app
from meterlake.config.errors import ConfigError, RetryableError
from meterlake.config.settings import Settings

log = logging.getLogger("meterlake.api")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (IPv4 or IPv6; port 0: a free one).

    Raises
    ------
    RetryableError
        The address is in use or cannot be bound.
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise RetryableError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def url_of(sock: socket.socket, *, tls: bool) -> str:
    """The base URL a socket serves, e.g. ``http://127.0.0.1:8080``."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def serve(
    root: Path,
    settings: Settings,
    *,
    host: str,
    port: int,
    announce: Callable[[str], None],
) -> None:
    """Serve the API over the lake at ``root`` until SIGTERM or SIGINT.

    ``announce`` is called with the base URL once the socket is bound.

    Raises
    ------
    ConfigError
        The certificate or key cannot be loaded, or the cursor key file is bad.
    RetryableError
        The address cannot be bound.
    """
    api = settings.api
    app = create_app(root, settings)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # meterlake.api.access logs each request, without its headers
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        ssl_certfile=None if api.tls_cert is None else str(api.tls_cert),
        ssl_keyfile=None if api.tls_key is None else str(api.tls_key),
    )
    try:
        config.load()
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"[api] tls_cert {api.tls_cert} / tls_key {api.tls_key}: cannot load them ({exc}); "
            "give a PEM certificate and its unencrypted private key"
        ) from None
    sock = listen(host, port)
    threading.Thread(target=_warm, args=(app,), name="warm-lake", daemon=True).start()
    announce(url_of(sock, tls=api.tls_cert is not None))
    uvicorn.Server(config).run(sockets=[sock])


def _warm(app: FastAPI) -> None:
    try:
        app.state.reader.warm()
    except Exception:  # the first request tries again and answers with what went wrong
        log.warning("could not read the newest billing period ahead", exc_info=True)
