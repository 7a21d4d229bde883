"""``dai module mcp``: publish an existing MCP server as a module, or say in one line why it cannot.

    dai module mcp --id weather -- python weather_server.py       # a server on stdio
    dai module mcp --id weather --url http://127.0.0.1:8000/mcp   # a Streamable HTTP server

It starts (or connects to) the MCP server with the official ``mcp`` client — the 2026-07-28
revision when the server speaks it, else the initialize handshake of 2025-11-25 — lists its tools
and serves each as a capability (:mod:`.mcp_tools`: names, schemas, progress, errors,
cancellation), on the bus as ``dai module run`` serves a class (:func:`.module_run.serve`: the
credential, ``--wait``, reconnecting, signals, leaving gracefully). ``--list`` prints the tool →
capability mapping and ``--registration`` the body of ``POST /v1/modules`` that registers exactly
those capabilities, both without the bus.

When the server says its tool list changed (``notifications/tools/list_changed``, or an event of
its ``subscriptions/listen`` stream), the list is read again and a module built from it starts on
the same connection and announces its manifest to the hub; the previous one leaves once its calls
in progress are done. A capability that is new since the module was registered is refused by the
bus until ``PATCH /v1/modules/{id}`` lists it: a line says so.

Everything that can be checked before the bus is: the arguments, the credential, the server
(started, answering, offering tools). Each failure is one ``dai:`` line; exit code 2 for what
retrying will not mend (bad usage, a command that does not exist, a server with no tools), 1 for an
MCP server or NATS that cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import mcp_types
import nats.errors
from mcp import Client as McpClient, MCPError, StdioServerParameters
from mcp.client import Transport
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import SubscriptionLost
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from democratic_ai.contracts import subjects
from democratic_ai.contracts.bus import BusCredentialError, BusOptions, role_of
from democratic_ai.sdk import Module, ModuleConfig
from democratic_ai.sdk.errors import CredentialError, DaiError

from .mcp_tools import MappedTool, ToolModule, map_tools, module_class
from .module_run import EXIT_NO_BUS, GRACE, ModuleRunError, run_with_signals, serve, shown

__all__ = ["McpBridge", "McpRun", "McpTarget", "list_tools", "main", "parse_target"]

log = logging.getLogger("dai.module.mcp")

PING_INTERVAL = 2.0  # seconds between pings that tell whether a 2025-11-25 server is still there
RELISTEN_DELAY = 1.0  # seconds before opening again a change stream the server closed
# --protocol: the mcp client's mode — probe for 2026-07-28 and fall back, or insist on one revision.
PROTOCOL_MODES = {"auto": "auto", "2025-11-25": "legacy", "2026-07-28": "2026-07-28"}
HTTP_TIMEOUT, HTTP_READ_TIMEOUT = 30.0, 300.0  # seconds, as the mcp SDK's own HTTP client (a call may stream long)


@dataclass(frozen=True, slots=True)
class McpTarget:
    """The MCP server: a command to run on stdio, or the URL of a Streamable HTTP endpoint."""

    command: tuple[str, ...] = ()
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    protocol: str = "auto"  # a key of PROTOCOL_MODES

    def __post_init__(self) -> None:
        if not self.command and not self.url:
            raise ModuleRunError(
                "give the MCP server to publish: a command after -- (stdio), as in"
                " dai module mcp --id ID -- python server.py, or --url (Streamable HTTP)"
            )
        if self.command and self.url:
            raise ModuleRunError("give the MCP server as a command after -- or as --url, not both")
        if self.headers and not self.url:
            raise ModuleRunError("--header goes with --url: a stdio server takes --env instead")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ModuleRunError(f"--url must be an http:// or https:// URL, not {self.url!r}")

    def describe(self) -> str:
        """The server in words, for a line of output: never a password a URL may hold."""
        return shown(self.url) if self.url else " ".join(self.command)

    async def open(self, stack: AsyncExitStack, changed: asyncio.Event) -> McpClient:
        """The connected client (entered on ``stack``); ``changed`` is set when the server's tools change."""

        async def on_message(message: object) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                changed.set()
            elif isinstance(message, Exception):
                log.warning("the MCP server's connection: %s", message)

        if self.url:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=self.headers, timeout=httpx2.Timeout(HTTP_TIMEOUT, read=HTTP_READ_TIMEOUT))
            )
            server: Transport | StdioServerParameters = streamable_http_client(self.url, http_client=http)
        else:
            server = StdioServerParameters(
                command=self.command[0], args=list(self.command[1:]), env=self.env, cwd=Path.cwd()
            )
        # No response cache: after a change the list is read again, never served from memory.
        client = McpClient(server, message_handler=on_message, cache=None, mode=PROTOCOL_MODES[self.protocol])
        return await stack.enter_async_context(client)


def parse_target(
    command: Sequence[str], url: str | None, headers: Sequence[str], env: Sequence[str], protocol: str = "auto"
) -> McpTarget:
    """The target the arguments name, or :class:`ModuleRunError` saying what is wrong with them."""
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    parsed_headers = {}
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise ModuleRunError(f"--header takes 'NAME: VALUE', not {header!r}")
        parsed_headers[name.strip()] = value.strip()
    parsed_env = {}
    for item in env:
        name, equals, value = item.partition("=")
        if not name or not name.replace("_", "").isalnum():
            raise ModuleRunError(f"--env takes NAME or NAME=VALUE, not {item!r}")
        if not equals:
            if name not in os.environ:
                raise ModuleRunError(f"--env {name}: there is no {name} in this environment to pass on")
            value = os.environ[name]
        parsed_env[name] = value
    return McpTarget(command=tuple(command), url=url or "", headers=parsed_headers, env=parsed_env, protocol=protocol)


class McpBridge:
    """The module serving an MCP server's tools, built again whenever the server's tool list changes.

    It stands in for a :class:`~democratic_ai.sdk.Module` where :func:`.module_run.serve` runs one.
    """

    def __init__(
        self,
        client: McpClient,
        module_id: str,
        prefix: str,
        config: ModuleConfig | None,
        tools: list[MappedTool],
        changed: asyncio.Event,
        only: frozenset[str] = frozenset(),
    ) -> None:
        self.module_id = module_id
        self._only = only  # --tool: publish these tools alone (none: all)
        self.lost = asyncio.Event()  # the server closed the connection (a stdio server that exited, say)
        self._client, self._prefix, self._config, self._changed = client, prefix, config, changed
        self._tools = tools
        self._current: ToolModule = self._build(tools)
        self._registered = frozenset(self._current.capabilities)  # what the module was started with
        self._retiring: dict[asyncio.Task[None], Module] = {}
        self._watchers: list[asyncio.Task[None]] = []

    def _build(self, tools: list[MappedTool]) -> ToolModule:
        return module_class(self.module_id, tools, self._client.server_info)(self._client, self.lost, self._config)

    @property
    def tenant(self) -> str:
        return self._current.tenant

    @property
    def capabilities(self) -> dict[str, object]:
        return dict(self._current.capabilities)

    @property
    def calls_in_progress(self) -> int:
        return self._current.calls_in_progress + sum(m.calls_in_progress for m in self._retiring.values())

    async def start(self, nc: NATS) -> None:
        await self._current.start(nc)
        self._watchers = [asyncio.create_task(self._follow(nc), name=f"{self.module_id}-tools")]
        modern = self._client.protocol_version in MODERN_PROTOCOL_VERSIONS
        capabilities = self._client.server_capabilities.tools
        if modern and capabilities is not None and capabilities.list_changed:
            self._watchers.append(asyncio.create_task(self._listen(), name=f"{self.module_id}-listen"))
        elif not modern:
            self._watchers.append(asyncio.create_task(self._ping(), name=f"{self.module_id}-ping"))

    async def stop(self, grace: float = GRACE) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        await asyncio.gather(self._current.stop(grace), *self._retiring, return_exceptions=True)

    async def _ping(self) -> None:
        """Notice a 2025-11-25 server that is gone between calls too: a ``ping`` every few seconds.

        (2026-07-28 removed ``ping``: there the change stream's abrupt end, or a call, tells.)"""
        # The SDK warns on every ping that 2026-07-28 removed it; this connection is not 2026-07-28.
        warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)
        while True:
            await asyncio.sleep(PING_INTERVAL)
            try:
                await self._client.send_ping()
            except MCPError as exc:
                if exc.error.code == mcp_types.CONNECTION_CLOSED:
                    self.lost.set()
                    return
                log.debug("the MCP server's answer to ping: %s", exc.error.message)

    async def _listen(self) -> None:
        """Hear of changes on the 2026-07-28 ``subscriptions/listen`` stream (older servers notify instead).

        A stream the server closes is opened again; one that breaks off means the server is gone."""
        while True:
            try:
                async with self._client.listen(tools_list_changed=True) as events:
                    async for _ in events:
                        self._changed.set()
            except SubscriptionLost:
                self.lost.set()
                return
            except MCPError as exc:
                if exc.error.code == mcp_types.CONNECTION_CLOSED:
                    self.lost.set()
                else:
                    log.warning(
                        "the MCP server refused subscriptions/listen (%s): a change of its tools will go unnoticed",
                        exc.error.message,
                    )
                return
            await asyncio.sleep(RELISTEN_DELAY)
            self._changed.set()  # it may have changed while no stream was open

    async def _follow(self, nc: NATS) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                tools = map_tools(self._prefix, await list_tools(self._client), self._only)
            except MCPError as exc:
                log.warning("the MCP server said its tools changed, but tools/list failed: %s", exc.error.message)
                continue
            if tools == self._tools:
                continue
            if not tools:
                log.warning("the MCP server's tools changed and none is left to publish; still serving the old ones")
                continue
            try:
                module = self._build(tools)
            except (DaiError, TypeError, ValueError) as exc:  # e.g. a tool's schema the SDK refuses
                log.error("the MCP server's new tool list cannot be served; still serving the old one: %s", exc)
                continue
            try:
                await module.start(nc)  # both serve for a moment: no call meets "no responders"
            except nats.errors.Error as exc:
                log.error(
                    "the module of the MCP server's new tool list could not start (%s); still serving the old one", exc
                )
                await module.stop(0)
                continue
            old, self._current, self._tools = self._current, module, tools
            retiring = asyncio.create_task(old.stop(GRACE))
            self._retiring[retiring] = old
            retiring.add_done_callback(lambda task: self._retiring.pop(task, None))
            log.info("the MCP server's tools changed: now serving %s", ", ".join(sorted(module.capabilities)))
            say_mapping(tools)
            new = sorted(set(module.capabilities) - self._registered)
            if new:
                log.warning(
                    "new since the start: %s; the bus refuses their calls unless the module's registration"
                    " lists them (PATCH /v1/modules/%s)",
                    ", ".join(new),
                    self.module_id,
                )


async def list_tools(client: McpClient) -> list[mcp_types.Tool]:
    """Every tool, page by page."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def say_mapping(tools: Sequence[MappedTool]) -> None:
    for tool in tools:
        log.info("tool %s -> capability %s", tool.tool, tool.capability)


# What starting or reaching a server and its handshake may raise: a process or socket that fails, an
# HTTP error, a JSON-RPC error, a stream that ends, an answer the SDK cannot read — or, from anyio's
# task groups, a group of those.
_CONNECT_ERRORS = (
    OSError,
    httpx2.HTTPError,
    MCPError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ValidationError,
    ExceptionGroup,
)


def _leaf(error: BaseException) -> BaseException:
    """The first error an exception group holds (anyio's task groups wrap what a transport raised)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _connect_failure(target: McpTarget, error: BaseException) -> ModuleRunError:
    error = _leaf(error)
    if isinstance(error, FileNotFoundError) and target.command:
        return ModuleRunError(f"cannot start the MCP server: there is no command {target.command[0]!r}")
    if isinstance(error, httpx2.TransportError) and target.url:
        return ModuleRunError(f"cannot reach the MCP server at {target.describe()}: {error}", EXIT_NO_BUS)
    text = error.error.message if isinstance(error, MCPError) else (str(error) or type(error).__name__)
    where = f"at {target.describe()}" if target.url else f"started with {target.describe()!r}"
    return ModuleRunError(f"the MCP server {where} did not answer the handshake: {text}", EXIT_NO_BUS)


@dataclass(frozen=True, slots=True)
class McpRun:
    """What ``dai module mcp`` was asked to do."""

    module_id: str
    target: McpTarget
    prefix: str
    credential_file: Path | None
    wait: bool
    listing: str  # "", "list" (the mapping) or "registration" (the body of POST /v1/modules)
    only: frozenset[str] = frozenset()  # --tool: the tools to publish (none: all)


def _options(run: McpRun) -> tuple[BusOptions, ModuleConfig | None]:
    try:
        options = BusOptions.from_env(credential_file=run.credential_file)
    except BusCredentialError as exc:
        raise ModuleRunError(str(exc)) from None
    if role_of(options.credential):
        return options, None  # a platform role (the operator): the module is the system tenant's
    try:
        # Any module_id-bearing class checks the credential; the tools do not matter for that.
        return options, module_class(run.module_id, (), None).config_for_credential(options.credential)
    except CredentialError as exc:
        raise ModuleRunError(str(exc)) from None


async def _bridge(run: McpRun, stop: asyncio.Event) -> int:
    try:
        return await _publish(run, stop)
    except BaseExceptionGroup as group:
        # Raised inside the MCP client's context, a reason to stop comes out wrapped by its task groups.
        if isinstance(reason := _leaf(group), ModuleRunError):
            raise reason from None
        raise


async def _publish(run: McpRun, stop: asyncio.Event) -> int:
    bus = None if run.listing else _options(run)
    changed = asyncio.Event()
    async with AsyncExitStack() as stack:
        try:
            client = await run.target.open(stack, changed)
            offered = await list_tools(client)
        except _CONNECT_ERRORS as exc:
            raise _connect_failure(run.target, exc) from None
        unknown = sorted(run.only - {t.name for t in offered})
        if unknown:
            raise ModuleRunError(
                f"--tool {unknown[0]}: the MCP server has no such tool (its tools: "
                f"{', '.join(sorted(t.name for t in offered)) or 'none'})"
            )
        tools = map_tools(run.prefix, offered, run.only)
        if not tools:
            raise ModuleRunError(f"the MCP server {run.target.describe()!r} offers no tools: nothing to publish")
        if bus is None:
            _print_listing(run, client, tools)
            return 0
        options, config = bus
        info = client.server_info
        log.info(
            "MCP server %s%s (protocol %s): %d tool(s)",
            info.name if info else run.target.describe(),
            f" {info.version}" if info and info.version else "",
            client.protocol_version,
            len(tools),
        )
        say_mapping(tools)
        try:
            bridge = McpBridge(client, run.module_id, run.prefix, config, tools, changed, run.only)
        except (DaiError, TypeError, ValueError) as exc:  # a tool's schema the SDK cannot serve
            raise ModuleRunError(f"the MCP server's tools cannot be served: {exc}") from None
        ended = asyncio.Event()  # a signal, or the server gone: either way the module leaves
        forwards = [asyncio.create_task(_forward(event, ended)) for event in (stop, bridge.lost)]
        try:
            code = await serve(options, bridge, ended, run.wait)
        finally:
            for task in forwards:
                task.cancel()
        if bridge.lost.is_set() and not stop.is_set():
            raise ModuleRunError(f"the MCP server {run.target.describe()!r} closed the connection", EXIT_NO_BUS)
        return code


async def _forward(event: asyncio.Event, to: asyncio.Event) -> None:
    await event.wait()
    to.set()


def _print_listing(run: McpRun, client: McpClient, tools: Sequence[MappedTool]) -> None:
    """``--list``: the mapping, a line per tool; ``--registration``: the body of POST /v1/modules."""
    if run.listing == "list":
        width = max(len(t.tool) for t in tools)
        for tool in tools:
            print(f"{tool.tool:<{width}}  ->  {tool.capability}")
        return
    info = client.server_info
    body = {
        "module_id": run.module_id,
        "name": (info.title or info.name) if info else run.module_id,
        "capabilities": [t.capability for t in tools],
    }
    print(json.dumps(body))


def main(args: argparse.Namespace) -> int:
    """``dai module mcp``: the process's exit code; a failure is one ``dai:`` line on stderr."""
    try:
        try:
            module_id = subjects.validate_token(args.module_id, "--id")
            prefix = subjects.validate_capability(args.prefix or module_id)
        except subjects.InvalidSubjectToken as exc:
            raise ModuleRunError(str(exc)) from None
        if args.list and args.registration:
            raise ModuleRunError("--list and --registration print different things: give one")
        run = McpRun(
            module_id=module_id,
            target=parse_target(args.server_command, args.url, args.header, args.env, args.protocol),
            prefix=prefix,
            credential_file=args.credential_file,
            wait=args.wait,
            listing="list" if args.list else "registration" if args.registration else "",
            only=frozenset(args.tool),
        )
        return run_with_signals(lambda stop: _bridge(run, stop))
    except ModuleRunError as exc:
        print(f"dai: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dai: interrupted", file=sys.stderr, flush=True)
        return 130
