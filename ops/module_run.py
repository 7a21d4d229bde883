"""``dai module run SPEC``: serve one module class until a signal, or say in one line why it cannot.

SPEC names the class as ``MODULE:CLASS``: ``shout:Shout`` (``shout.py`` in the current folder, which
is on the import path as it is for ``python -m``), ``pkg.mod:Class`` (anything importable), or
``./path/to/shout.py:Shout`` (a file anywhere; its folder goes on the import path, so it may import
its neighbours).

Everything that can be checked before connecting is: the spec, the class, the credential (and that
it was issued for this module id), and the handlers against their schemas (constructing the module
runs :mod:`democratic_ai.sdk.signatures`). Each failure is one ``dai:`` line and exit code 2.

Then it connects. NATS that cannot be reached is one ``dai:`` line and exit code 1, unless
``--wait``: then it keeps trying, backing off from 0.5 s to 10 s, with a line per attempt. Once
connected it never gives up on NATS: a lost connection is one line, its return another, and calls
simply wait meanwhile; what the attempts to reconnect meet is a line per kind (a credential the bus
refuses since it was revoked or rotated — or while its authorization service restarts), not one per
attempt. The connection closing for good ends the process with exit code 1.

SIGINT or SIGTERM stops it at any stage: while connecting it gives up at once; while serving it
leaves (the hub stops routing to it) and lets the calls in progress finish, up to ``GRACE``
seconds; a second signal while it waits cancels them and exits at once. A stop asked for by a
signal exits 0.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NATS

from democratic_ai.contracts import tracing
from democratic_ai.contracts.bus import RECONNECT_WAIT, BusCredentialError, BusOptions, role_of
from democratic_ai.sdk import Module
from democratic_ai.sdk.errors import CredentialError
from democratic_ai.services.busauth import inbox_prefix

__all__ = ["GRACE", "ModuleRunError", "Served", "load_module_class", "main", "run_with_signals", "serve"]

log = logging.getLogger("dai.module")

GRACE = 10.0  # seconds the calls in progress get to finish once a signal asked the module to stop
FIRST_RETRY, LAST_RETRY = 0.5, 10.0  # --wait: seconds between attempts to reach NATS, doubling
CONNECT_TIMEOUT = 2.0  # seconds one attempt may take (a host that drops packets never refuses)
CLOSE_TIMEOUT = 5.0  # seconds to flush and close the connection on the way out

EXIT_UNUSABLE = 2  # the spec, the class or the credential cannot be used: retrying will not help
EXIT_NO_BUS = 1  # NATS could not be reached, or closed the connection for good


class ModuleRunError(Exception):
    """Why ``dai module run`` cannot go on: one line for the user, and the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_UNUSABLE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# --- the spec ----------------------------------------------------------------------------------

_SPEC_FORMS = "MODULE:CLASS, e.g. shout:Shout, pkg.mod:Class or ./shout.py:Shout"


def load_module_class(spec: str) -> type[Module]:
    """The Module subclass ``spec`` names, or :class:`ModuleRunError` saying what is wrong with it."""
    target, colon, class_name = spec.rpartition(":")
    if not colon or not target or not class_name:
        raise ModuleRunError(f"expected {_SPEC_FORMS}; got {spec!r}")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(Path(target), spec)
    else:
        _on_import_path(Path.cwd())  # as `python -m` does: a module next to you is importable
        module = _import(target, spec)
    found = getattr(module, class_name, None)
    if found is None:
        classes = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type)
            and issubclass(v, Module)
            and v is not Module
            and getattr(v, "__module__", None) == module.__name__
        )
        hint = f" (its Module classes: {', '.join(classes)})" if classes else " (it defines no Module subclass)"
        raise ModuleRunError(f"{spec!r}: module {module.__name__!r} has no {class_name!r}{hint}")
    if not (isinstance(found, type) and issubclass(found, Module)):
        raise ModuleRunError(f"{spec!r} is {_kind(found)}, not a subclass of democratic_ai.sdk.Module")
    return found


def _kind(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    return f"a {type(value).__name__}"


def _on_import_path(folder: Path) -> None:
    entry = str(folder.resolve())
    if entry not in (str(Path(p).resolve()) if p else str(Path.cwd()) for p in sys.path):
        sys.path.insert(0, entry)


def _import(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ModuleRunError(
                f"{spec!r}: no module named {exc.name!r} in {Path.cwd()} or on the Python path (run it from the"
                f" folder that holds {exc.name.split('.')[0]}.py, or give the file's path: ./path/to/file.py:CLASS)"
            ) from None
        raise ModuleRunError(f"{spec!r}: importing {name!r} failed: {_located(exc)}") from None
    except Exception as exc:  # the author's code failed at import: one line that says where
        raise ModuleRunError(f"{spec!r}: importing {name!r} failed: {_located(exc)}") from None


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise ModuleRunError(f"{spec!r}: there is no file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    name = path.stem
    if not name.isidentifier():
        raise ModuleRunError(
            f"{spec!r}: {path.name} cannot be imported as a Python module (rename it, e.g. to"
            f" {name.replace('-', '_').replace('.', '_')}.py)"
        )
    _on_import_path(path.parent)  # its neighbours are importable, as for `python path/to/file.py`
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    if loaded is not None:
        raise ModuleRunError(f"{spec!r}: a module named {name!r} is already imported from elsewhere; rename {path}")
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise ModuleRunError(f"{spec!r}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModuleRunError(f"{spec!r}: importing {path} failed: {_located(exc)}") from None
    return module


def _located(exc: BaseException) -> str:
    """``Type: message (file, line n)``: the last line of a traceback the user does not need whole."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({Path(exc.filename).name}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    if frames:
        return f"{text} ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    return text


# --- before connecting -------------------------------------------------------------------------


def prepare(spec: str, credential_file: Path | None) -> tuple[BusOptions, Module]:
    """The bus options and the constructed module, or :class:`ModuleRunError` (exit 2)."""
    module_class = load_module_class(spec)
    try:
        options = BusOptions.from_env(credential_file=credential_file)
    except BusCredentialError as exc:
        raise ModuleRunError(str(exc)) from None
    try:
        config = None if role_of(options.credential) else module_class.config_for_credential(options.credential)
    except CredentialError as exc:
        raise ModuleRunError(str(exc)) from None
    try:
        # Constructing checks module_id and every handler against its schema (sdk/signatures.py).
        module = module_class(config)
    except Exception as exc:
        raise ModuleRunError(f"{spec}: {_located(exc) if not isinstance(exc, TypeError) else exc}") from None
    return options, module


# --- the connection ----------------------------------------------------------------------------


def shown(url: str) -> str:
    """``url`` without any user or password in it (it may be printed and logged)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def describe(error: BaseException) -> str:
    """Why a connection attempt failed, in words."""
    if _refused(error):
        return (
            "the server refused the credential (revoked or rotated, or the bus authorization service that"
            " admits modules is not running)"
        )
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return str(error) or type(error).__name__


_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, nats.errors.StaleConnectionError, nats.errors.NoServersError)


def _refused(error: BaseException) -> bool:
    """Whether the server refused the credential (nats-py says so with one class, or a plain Error)."""
    return isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower()


class Connection:
    """The module's NATS connection and its callbacks: a line per loss and per return, not a traceback."""

    def __init__(self, options: BusOptions, name: str, inbox: str) -> None:
        self.options = options
        self.name = name
        self.inbox = inbox
        self.url = shown(options.url)
        self.nc: NATS | None = None
        self.closed = asyncio.Event()  # closed for good, by the server's doing
        self.closing = False  # we are closing it: its callbacks are no news
        self._connected = False
        self._first_error: asyncio.Future[BaseException] | None = None
        self._lost_at: float | None = None
        self._said: set[str] = set()  # what failed attempts to reconnect said, once each per loss

    async def open(self, stop: asyncio.Event, wait: bool) -> NATS | None:
        """Connected, or None once ``stop`` is set; without ``wait`` the first failure is a ModuleRunError."""
        delay, attempt = FIRST_RETRY, 0
        while not stop.is_set():
            attempt += 1
            error = await self._attempt(stop)
            if error is None:
                return self.nc
            if stop.is_set():
                break
            if not wait:
                raise ModuleRunError(
                    f"cannot connect to NATS at {self.url}: {describe(error)}. Is the platform running (dai up)? Check"
                    " NATS_URL, or pass --wait to keep trying.",
                    EXIT_NO_BUS,
                )
            log.warning(
                "NATS at %s: %s; trying again in %g s (attempt %d, --wait)", self.url, describe(error), delay, attempt
            )
            await _sleep_unless(stop, delay)
            delay = min(delay * 2, LAST_RETRY)
        return None

    async def _attempt(self, stop: asyncio.Event) -> BaseException | None:
        """One attempt: None when connected (or stopped), else what went wrong."""
        nc = NATS()
        self._first_error = asyncio.get_running_loop().create_future()
        connecting = asyncio.create_task(
            nc.connect(
                self.options.servers,
                name=self.name,
                inbox_prefix=self.inbox.encode(),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                connect_timeout=CONNECT_TIMEOUT,
                reconnect_time_wait=RECONNECT_WAIT,
                max_reconnect_attempts=-1,
                **self.options.connect_kwargs(),
            )
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, self._first_error, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            self.nc, self._connected = nc, True
            return None
        # nats-py would go on trying (it was told never to give up, for the reconnections later):
        # this attempt is over, and its client with it.
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        self.closing = True
        try:
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
        except Exception:  # closing a client that never connected: nothing left to save
            pass
        self.closing = False
        if self._first_error.done():
            return self._first_error.result()
        error = connecting.exception() if not connecting.cancelled() else None
        return error or (None if stop.is_set() else RuntimeError("the connection attempt ended"))

    async def close(self) -> None:
        """Drain if connected (a last flush of what the module sent), else just close; never for long."""
        nc, self.closing = self.nc, True
        if nc is None or nc.is_closed:
            return
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT)
        except Exception as exc:  # timed out, or lost meanwhile: close all the same
            log.debug("draining the NATS connection failed: %s", exc)
        if not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
            except Exception as exc:
                log.debug("closing the NATS connection failed: %s", exc)

    async def _on_error(self, error: Exception) -> None:
        if not self._connected:
            if self._first_error is not None and not self._first_error.done():
                self._first_error.set_result(error)
            return
        if self._lost_at is not None or isinstance(error, _CONNECTION_ERRORS):
            # Each failed attempt to reconnect lands here, four a second: the loss was one line already,
            # and what the attempts say is one more line per kind (say, a credential the bus now refuses:
            # revoked, or the authorization service restarting), not one per attempt.
            text = describe(error)
            if self._lost_at is not None and not isinstance(error, _CONNECTION_ERRORS) and text not in self._said:
                self._said.add(text)
                log.warning("NATS at %s: %s; still trying", self.url, text)
            else:
                log.debug("NATS at %s: %s", self.url, text)
            return
        log.error("NATS: %s", describe(error))  # e.g. a permissions violation: the bus refused a subject

    async def _on_disconnected(self) -> None:
        if self._connected and not self.closing and self._lost_at is None:
            self._lost_at = time.monotonic()
            log.warning("lost the connection to NATS at %s; reconnecting (calls wait until it is back)", self.url)

    async def _on_reconnected(self) -> None:
        if self._lost_at is not None:
            log.warning("reconnected to NATS at %s after %.1f s", self.url, time.monotonic() - self._lost_at)
        self._lost_at = None
        self._said.clear()

    async def _on_closed(self) -> None:
        if self._connected and not self.closing:
            self.closed.set()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _until(stop: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it): whether it finished."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        task.result()  # its exception, if it raised one
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


# --- running -----------------------------------------------------------------------------------


class Served(Protocol):
    """What :func:`serve` runs: a :class:`~democratic_ai.sdk.Module`, or what stands in for one
    (``dai module mcp``'s bridge, which replaces its module when the MCP server's tools change)."""

    module_id: str

    @property
    def tenant(self) -> str: ...

    @property
    def capabilities(self) -> Mapping[str, object]: ...

    @property
    def calls_in_progress(self) -> int: ...

    async def start(self, nc: NATS) -> None: ...

    async def stop(self, grace: float = GRACE) -> None: ...


async def serve(options: BusOptions, module: Served, stop: asyncio.Event, wait: bool) -> int:
    """Connect, start, serve until ``stop`` (or the connection closes for good), stop; the exit code."""
    tracing.configure_tracing(f"dai-module-{module.module_id}")
    connection = Connection(options, f"dai-module-{module.module_id}", inbox_prefix(module.module_id))
    log.debug("module %s: connecting to NATS at %s", module.module_id, connection.url)
    nc = await connection.open(stop, wait)
    if nc is None:  # a signal while connecting
        return 0
    ended = asyncio.Event()  # stop, or the connection closed for good
    forwards = [asyncio.create_task(_forward(event, ended)) for event in (stop, connection.closed)]
    try:
        try:
            started = await _until(ended, module.start(nc))
        except nats.errors.Error as exc:  # e.g. no answer to the flush that confirms the subscriptions
            ended.set()
            raise ModuleRunError(
                f"module {module.module_id} could not start on NATS at {connection.url}: {describe(exc)}", EXIT_NO_BUS
            ) from None
        if started:
            log.info(
                "module %s of tenant %s serving %s on NATS at %s",
                module.module_id,
                module.tenant,
                ", ".join(sorted(module.capabilities)) or "events",
                connection.url,
            )
            await ended.wait()
        in_flight = module.calls_in_progress
        if in_flight:
            log.warning(
                "stopping: waiting up to %g s for %d call(s) in progress (send the signal again to stop at once)",
                GRACE,
                in_flight,
            )
        else:
            log.info("stopping")
        await module.stop(GRACE)
    finally:
        for task in forwards:
            task.cancel()
        await connection.close()
    if connection.closed.is_set() and not stop.is_set():
        error = nc.last_error
        raise ModuleRunError(
            f"NATS at {connection.url} closed the connection for good{': ' + describe(error) if error else ''}",
            EXIT_NO_BUS,
        )
    return 0


async def _forward(event: asyncio.Event, to: asyncio.Event) -> None:
    await event.wait()
    to.set()


def run_with_signals(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)``: the first SIGINT/SIGTERM sets ``stop``, a second cancels it outright."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()  # the user insists: no more waiting for calls in progress
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            log.warning("stopped at once; calls still in progress were cut short")
            return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapper())
    return uvloop.run(wrapper())


def main(spec: str, credential_file: Path | None = None, wait: bool = False) -> int:
    """``dai module run``: the process's exit code; a failure is one ``dai:`` line on stderr."""
    try:
        options, module = prepare(spec, credential_file)
        return run_with_signals(lambda stop: serve(options, module, stop, wait))
    except ModuleRunError as exc:
        print(f"dai: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C while importing the module's code, before the signal handlers
        print("dai: interrupted", file=sys.stderr, flush=True)
        return 130
