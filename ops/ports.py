"""Port checks and the errors the embedded servers raise when they cannot start.

`dai up` and the test suite start real servers on this machine; when one cannot
start, the user should get one line saying what is wrong and how to fix it, not a
traceback from deep inside a subprocess.
"""

from __future__ import annotations

import errno
import socket


class PortInUseError(Exception):
    """A TCP port a server needs is already taken by another process."""

    def __init__(self, port: int, what: str, flag: str = "--port") -> None:
        self.port = port
        self.what = what
        self.flag = flag
        super().__init__(f"port {port} is already in use ({what}); stop what is using it or pass {flag}")


class ServerStartError(Exception):
    """An embedded server exited or did not become ready while starting.

    The message carries the last lines of the server's log, because that is where
    the actual reason (bad config, full disk, permissions) is written.
    """


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1", flag: str = "--port") -> None:
    """Raise PortInUseError if `port` on `host` cannot be bound right now.

    This is a check, not a reservation: another process may still take the port
    before the server binds it. The server then fails to start and its log says so;
    the check exists to turn the common case into a clear message up front.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers (nats-server, like most Go and C servers) set SO_REUSEADDR, so a
        # port whose last connections sit in TIME_WAIT is usable by them; without
        # the flag here such a port would be reported as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(port, what, flag) from None
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago.

    Racy by nature (the port is released before the caller binds it); prefer
    letting the server choose (nats-server `-p -1`) where that is possible.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
