"""A free port on 127.0.0.1, for tests, benchmarks and the demo."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (TCP, or UDP with ``SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
