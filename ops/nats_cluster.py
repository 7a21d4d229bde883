"""A JetStream cluster of bundled ``nats-server`` processes on loopback.

``dai up --cluster 3`` and the fault-injection tests run the platform on it: three servers
(the fewest that keep a Raft majority when one fails), each with its own store under
``<data_dir>/cluster/dai-<n>``, routes between them on loopback, and the same ``nats.conf``
as a single server. Clients get every member's URL (``url``), in an order that differs per
role (:meth:`NatsCluster.url_for`), so the platform's processes spread over the servers and
fail over to the others.

Route ports are picked free at each start and kept across a member's restart: a member's
Raft identity is its name, not its address, so a cluster restarted on other ports is the
same cluster.
"""

from __future__ import annotations

import atexit
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from nats.js import JetStreamContext

from democratic_ai.contracts.bus import BusOptions

from .credentials import PlatformCredentials
from .nats_server import ClusterMember, NatsServer, role_bus, role_environment
from .ports import ServerStartError, free_port

__all__ = ["NatsCluster"]

MIN_SIZE = 3


class NatsCluster:
    """``size`` nats-servers forming one JetStream cluster, sharing ``data_dir``'s credentials.

    ``port`` is the first member's client port (the others take the next ones); ``None``
    lets every member pick a free one; ``config`` is another nats.conf and ``sync_interval`` another
    fsync interval than ``always`` (the benchmarks use them)."""

    def __init__(
        self,
        data_dir: Path,
        size: int = MIN_SIZE,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        config: Path | None = None,
        sync_interval: str | None = None,
    ) -> None:
        if size < MIN_SIZE:
            raise ValueError(
                f"a cluster needs at least {MIN_SIZE} servers: with fewer, losing one loses the Raft majority"
            )
        self.data_dir = Path(data_dir).absolute()
        self.credentials = PlatformCredentials.ensure(self.data_dir)
        self.tls = tls
        routes = tuple(free_port() for _ in range(size))
        self.servers = [
            NatsServer(
                self.data_dir,
                port=port + n if port else 0,
                tls=tls,
                config=config,
                sync_interval=sync_interval,
                monitor_port=0,
                member=ClusterMember(f"dai-{n + 1}", routes[n], routes),
            )
            for n in range(size)
        ]

    @property
    def url(self) -> str:
        """Every member's URL, comma-separated (what ``NATS_URL`` takes)."""
        return ",".join(server.url for server in self.servers)

    def url_for(self, index: int) -> str:
        """Every member's URL, starting with member ``index`` (mod the size): one role's ``NATS_URL``."""
        start = index % len(self.servers)
        ordered = self.servers[start:] + self.servers[:start]
        return ",".join(server.url for server in ordered)

    def bus(self, role: str = "operator") -> BusOptions:
        """How a process of platform ``role`` connects to the cluster."""
        return role_bus(self.url, self.credentials, self.tls, role)

    def environment(self, role: str = "operator") -> dict[str, str]:
        """The environment variables that make a ``dai`` command connect to the cluster as ``role``."""
        return role_environment(self.url, self.credentials, self.tls, role)

    def start(self, timeout: float = 30.0) -> None:
        """Start every member, then return once each reports JetStream healthy (a meta leader
        elected, its streams current)."""
        atexit.register(self.stop)
        for server in self.servers:
            server.start(timeout=timeout)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member's ``/healthz`` says JetStream is current."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if server.running:
                while not _healthy(server.monitor_url):
                    if time.monotonic() > deadline:
                        raise ServerStartError(
                            f"the NATS cluster was not healthy within {timeout:g}s: {server.url} is not"
                            f" current; see {server.log_path}"
                        )
                    time.sleep(0.1)

    def member(self, name: str) -> NatsServer:
        """The member whose server name is ``name`` (``dai-1`` …)."""
        for server in self.servers:
            if server.member is not None and server.member.name == name:
                return server
        raise KeyError(f"no member {name!r} in this cluster")

    async def leader_of(self, js: JetStreamContext, stream: str) -> NatsServer:
        """The member that leads ``stream``'s Raft group now."""
        info = await js.stream_info(stream)
        if info.cluster is None or info.cluster.leader is None:
            raise LookupError(f"stream {stream} has no leader now")
        return self.member(info.cluster.leader)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _healthy(monitor_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
