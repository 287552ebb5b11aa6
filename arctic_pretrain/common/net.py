"""Network helpers shared by stages, tests and benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on this host now (for a rendezvous or a server started right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
