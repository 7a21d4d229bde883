"""``dai``: the command line of Democratic_AI."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from democratic_ai.services.billing import BillingConfig
    from democratic_ai.services.identity import KeyEncryptionKey

from democratic_ai.contracts.bus import BusCredentialError, BusOptions

__all__ = ["main"]

USAGE_FLUSH_ENV = "DAI_USAGE_FLUSH_SECONDS"  # longest a gateway buffers usage events (default 1 s)
# The ports of the workers' /metrics (ops/metrics_endpoint.py): off when unset.
PROJECTIONS_METRICS_ENV = "DAI_PROJECTIONS_METRICS_PORT"
HUB_METRICS_ENV = "DAI_HUB_METRICS_PORT"


def _metrics_options(parser: argparse.ArgumentParser, env: str) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default: ${env}; unset: off)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (default: 127.0.0.1)"
    )


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        example = "nats://127.0.0.1:4222" if name == "NATS_URL" else "postgresql://…"
        raise SystemExit(f'dai: set {name} (e.g. {example}); for the dai up running here: eval "$(dai env)"')
    return value


def _bus(credential_file: Path | None = None) -> BusOptions:
    """Where NATS is (``NATS_URL``) and this process's credential (see democratic_ai.contracts.bus)."""
    try:
        return BusOptions.from_env(_env("NATS_URL"), credential_file)
    except BusCredentialError as exc:
        raise SystemExit(f"dai: {exc}") from None


def _kek() -> KeyEncryptionKey:
    """The key-encryption key from DAI_KEK_FILE or DAI_KEK; a one-line exit when neither works."""
    from democratic_ai.services.identity import KekUnavailable, load_kek

    try:
        return load_kek()
    except KekUnavailable as exc:
        raise SystemExit(f"dai: {exc}") from None


def _password(from_stdin: bool) -> str:
    """A new password: the first line of stdin, or typed twice at a terminal without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise SystemExit("dai: --password-stdin read nothing: write the password as one line to standard input")
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise SystemExit("dai: standard input is not a terminal: give the password on it with --password-stdin")
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != password:
        raise SystemExit("dai: the two passwords differ; nothing was registered")
    return password


def _billing_config() -> BillingConfig:
    """The billing settings (tax, grace, seller, plan catalogue), checked; a one-line exit when one is wrong."""
    from democratic_ai.services.billing import InvalidBillingConfig, check_environment

    try:
        return check_environment()
    except InvalidBillingConfig as exc:
        raise SystemExit(f"dai: {' '.join(str(exc).split())}") from None


_PROJECTION_NAMES = "a projection: registry, identity, usage or billing"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _stream_replicas(asked: int | None) -> int | None:
    """``--replicas``, else ``DAI_STREAM_REPLICAS``; a bad setting stops with the fix."""
    from democratic_ai.contracts.streams import stream_replicas

    try:
        return asked or stream_replicas()
    except ValueError as exc:
        raise SystemExit(f"dai: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dai", description="Democratic_AI: an open platform for sharing AI tools.")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_version()}",
        help="print the installed version of democratic-ai and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole platform on this machine (embedded NATS and Postgres)")
    up.add_argument("--data-dir", type=Path, default=Path(".dai"), help="where all state lives (default: ./.dai)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    up.add_argument("--nats-port", type=int, default=None, help="embedded NATS port (default: 4222, from nats.conf)")
    up.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve NATS clients over TLS with this certificate (PEM; needs --tls-key)",
    )
    up.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="the private key of --tls-cert (PEM)")
    up.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run N (3 or more) nats-servers as one JetStream cluster on loopback, every stream on 3 replicas,"
        " the platform's processes spread over them (client ports from --nats-port on, else free ones)",
    )

    env_help = (
        "print the export lines (NATS_URL, DATABASE_URL, the operator's credential) of the dai up"
        ' running on a data dir, for eval "$(dai env)"; exit 1 when none runs there'
    )
    env = commands.add_parser("env", help=env_help, description=env_help[0].upper() + env_help[1:] + ".")
    env.add_argument(
        "--data-dir", type=Path, default=Path(".dai"), help="the data dir of that dai up (default: ./.dai)"
    )

    commands.add_parser(
        "bus-auth",
        help="run the bus's authorization service (the auth callout that admits modules; needs NATS_URL,"
        " DAI_BUS_CREDENTIAL_FILE, DAI_BUS_SYS_CREDENTIAL_FILE, DAI_BUS_ISSUER_SEED_FILE)",
    )

    gateway = commands.add_parser(
        "gateway", help="run the HTTP gateway (needs NATS_URL and DATABASE_APP_URL, or DATABASE_URL to derive it)"
    )
    gateway.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")

    streams = commands.add_parser("streams", help="the log's streams: ensure (create or update them)")
    stream_commands = streams.add_subparsers(dest="streams_command", required=True, metavar="ACTION")
    ensure = stream_commands.add_parser(
        "ensure",
        help="create or update every stream and key-value bucket as declared (needs NATS_URL, the operator's"
        " credential); dai up does it itself",
    )
    ensure.add_argument(
        "--replicas",
        type=int,
        choices=range(1, 6),
        default=None,
        metavar="N",
        help="copies of each stream: 1 on one server, 3 in a cluster (default: DAI_STREAM_REPLICAS, else what"
        " the server has, 1 for a new stream)",
    )

    hub = commands.add_parser("hub", help="run the hub: module announcements and presence (needs NATS_URL)")
    _metrics_options(hub, HUB_METRICS_ENV)

    module = commands.add_parser("module", help="module commands: run a module you wrote, publish an MCP server")
    module_commands = module.add_subparsers(dest="module_command", required=True, metavar="ACTION")
    run = module_commands.add_parser(
        "run",
        help="serve a module class on the bus (NATS_URL, default nats://127.0.0.1:4222)",
        description="Serve a Module subclass until Ctrl-C or SIGTERM. The spec, the credential and the handlers"
        " (against their input schemas) are checked first; then it connects to NATS_URL"
        " (default nats://127.0.0.1:4222). Ctrl-C leaves and lets calls in progress finish (up to 10 s);"
        " a second Ctrl-C stops at once. Exit codes: 0 stopped by a signal, 1 NATS unreachable or the"
        " connection closed for good, 2 a spec, class or credential that cannot be used.",
    )
    run.add_argument(
        "spec",
        metavar="MODULE:CLASS",
        help="the class to serve: shout:Shout (shout.py in this folder), pkg.mod:Class (importable),"
        " or ./path/to/shout.py:Shout (a file anywhere)",
    )
    run.add_argument(
        "--credential-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the module credential from POST /v1/modules (default: $DAI_BUS_CREDENTIAL or the file"
        " named by $DAI_BUS_CREDENTIAL_FILE)",
    )
    run.add_argument(
        "--wait",
        action="store_true",
        help="if NATS cannot be reached, keep trying (backing off from 0.5 s to 10 s, a line per"
        " attempt) instead of exiting with code 1",
    )

    bridge = module_commands.add_parser(
        "mcp",
        help="publish an MCP server (a stdio command after --, or --url) as a module: each tool a capability",
        description="Publish an existing MCP server as a module: each of its tools becomes a capability"
        " <prefix>.<tool> (the mapping is printed; --list shows it), served on the bus like dai module run"
        " serves a class. Register the module first (POST /v1/modules; --registration prints the body)."
        " Exit codes: 0 stopped by a signal (or after --list/--registration), 1 the MCP server or NATS cannot"
        " be reached, 2 arguments, a credential or a server that cannot be used.",
    )
    bridge.add_argument(
        "--id",
        dest="module_id",
        required=True,
        metavar="MODULE_ID",
        help="the module id to publish the server as (as registered: POST /v1/modules)",
    )
    bridge.add_argument(
        "--url", default=None, help="the server's Streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp"
    )
    bridge.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header for every request to --url, e.g. 'Authorization: Bearer …' (repeatable)",
    )
    bridge.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="pass NAME (from this environment, or as VALUE) to the stdio server, which otherwise"
        " gets only PATH, HOME and the like (repeatable)",
    )
    bridge.add_argument(
        "--protocol",
        choices=("auto", "2025-11-25", "2026-07-28"),
        default="auto",
        help="the MCP revision: auto (default) tries 2026-07-28 and falls back to the initialize"
        " handshake of 2025-11-25; either date insists on that revision",
    )
    bridge.add_argument(
        "--tool",
        action="append",
        default=[],
        metavar="NAME",
        help="publish only this tool, by its MCP name (repeatable; default: every tool)",
    )
    bridge.add_argument(
        "--prefix", default=None, help="the first part of every capability name (default: the module id)"
    )
    bridge.add_argument(
        "--credential-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the module credential from POST /v1/modules (default: $DAI_BUS_CREDENTIAL or the file"
        " named by $DAI_BUS_CREDENTIAL_FILE)",
    )
    bridge.add_argument(
        "--wait", action="store_true", help="if NATS cannot be reached, keep trying (as dai module run)"
    )
    bridge.add_argument(
        "--list",
        action="store_true",
        help="print each tool and its capability, and exit (no bus, no credential needed)",
    )
    bridge.add_argument(
        "--registration",
        action="store_true",
        help="print the JSON body of POST /v1/modules that registers exactly these capabilities, and exit",
    )
    bridge.add_argument(
        "server_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG ...]",
        help="the command that runs the server on stdio, after --",
    )

    projections = commands.add_parser(
        "projections", help="the read models folded from the log: run, status, retry, rebuild, verify"
    )
    projection_commands = projections.add_subparsers(dest="projection_command", required=True, metavar="ACTION")
    prun = projection_commands.add_parser("run", help="fold events into read models (needs NATS_URL, DATABASE_URL)")
    prun.add_argument("names", nargs="*", metavar="NAME", help="projections to run (default: all)")
    prun.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="split the partitioned projections (usage) between N workers (default: $DAI_PROJECTION_WORKERS or 1)",
    )
    prun.add_argument(
        "--worker",
        type=int,
        metavar="I",
        help="which of the N workers this is, from 0 (default: $DAI_PROJECTION_WORKER or 0)",
    )
    _metrics_options(prun, PROJECTIONS_METRICS_ENV)
    pstatus = projection_commands.add_parser(
        "status", help="each projection's position, lag and quarantined events (needs NATS_URL, DATABASE_URL)"
    )
    pstatus.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    retry = projection_commands.add_parser(
        "retry", help="apply a projection's quarantined events again, after a fix (needs DATABASE_URL)"
    )
    retry.add_argument("name", metavar="NAME", help=_PROJECTION_NAMES)
    rebuild = projection_commands.add_parser(
        "rebuild", help="rebuild a read model from its stream in a shadow schema and swap it in atomically"
    )
    rebuild.add_argument("name", metavar="NAME", help=_PROJECTION_NAMES)
    rebuild.add_argument(
        "--as-of",
        metavar="TIME",
        help="build the state as of TIME into schema dai_asof_NAME; the live model is untouched",
    )
    verify = projection_commands.add_parser("verify", help="prove a read model equals a rebuild (exit 1 if not)")
    verify.add_argument("name", metavar="NAME", help=_PROJECTION_NAMES)

    replay = commands.add_parser("replay", help="decode a stream's events to JSON lines or CSV (needs NATS_URL)")
    replay.add_argument(
        "stream",
        metavar="STREAM",
        help="MCP, USAGE, IDENTITY, BILLING, REGISTRY, RATELIMIT or any other stream (any case)",
    )
    replay.add_argument("--tenant", help="only this tenant's events")
    replay.add_argument("--capability", help="only this capability's events (MCP)")
    replay.add_argument("--subject", help="a NATS subject filter, e.g. 'mcp.req.acme.>'")
    replay.add_argument(
        "--since", metavar="TIME", help="from TIME: ISO 8601 (UTC unless an offset is given) or an age like 15m, 2h, 7d"
    )
    replay.add_argument("--from-seq", type=int, metavar="N", help="from stream sequence N")
    replay.add_argument("--until", metavar="TIME", help="up to TIME (inclusive)")
    replay.add_argument("--to-seq", type=int, metavar="N", help="up to stream sequence N (inclusive)")
    replay.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="JSON lines, one event each (default), or CSV with the event as JSON in one column",
    )
    replay.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    identity = commands.add_parser("identity", help="identity administration: rotate-jwt-key, add-super-admin")
    identity_commands = identity.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    identity_commands.add_parser(
        "rotate-jwt-key",
        help="sign new access tokens with a new key; old ones stay valid until they expire"
        " (needs NATS_URL and DAI_KEK_FILE or DAI_KEK)",
    )
    add_admin = identity_commands.add_parser(
        "add-super-admin",
        help="register a super admin in the system tenant, who signs in to the console with an e-mail"
        " and a password (needs NATS_URL, the operator's credential and DAI_KEK_FILE or DAI_KEK)",
    )
    add_admin.add_argument("--email", required=True, help="the super admin's e-mail address (their sign-in name)")
    add_admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (default: prompt for it twice,"
        " without echo; a password is never an argument)",
    )
    billing = commands.add_parser("billing", help="billing: close-period (issue the invoices of ended months)")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True, metavar="ACTION")
    close = billing_commands.add_parser(
        "close-period",
        help="issue the invoices of ended months (needs NATS_URL, DATABASE_URL; pushes to Stripe"
        " when STRIPE_API_KEY is set)",
    )
    close.add_argument("--tenant", default=None, help="only this tenant (default: every tenant with a subscription)")
    close.add_argument(
        "--period",
        default=None,
        metavar="YYYY-MM",
        help="only this month of the tenant's time zone (default: every ended month not yet invoiced)",
    )
    status = commands.add_parser(
        "status",
        help="the platform at a glance: streams, consumers and their lag, modules and their statistics,"
        " projections (needs NATS_URL; DATABASE_URL for the projections)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    modules = commands.add_parser(
        "modules", help="module instances and their endpoints' requests, errors and latency (needs NATS_URL)"
    )
    modules.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    from .backup_commands import add_commands as add_backup_commands

    add_backup_commands(commands)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's help line is also the description its own ``--help`` starts with."""
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {choice.dest: choice.help for choice in action._choices_actions}  # noqa: SLF001
            for name, subparser in action.choices.items():
                if subparser.description is None:
                    subparser.description = helps.get(name)
                _describe(subparser)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("democratic-ai")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .runtime import run_until_signalled, setup_logging

    setup_logging()
    if args.command == "up":
        from .up import UpOptions, up

        if (args.tls_cert is None) != (args.tls_key is None):
            raise SystemExit("dai: --tls-cert and --tls-key go together")
        _billing_config()  # the gateway it starts would refuse a bad setting: say so once, before starting
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        if args.cluster and args.cluster < 3:
            raise SystemExit("dai: --cluster needs 3 or more servers: with fewer, losing one loses the Raft majority")
        if args.cluster and os.environ.get("NATS_URL"):
            raise SystemExit("dai: --cluster starts the cluster itself; unset NATS_URL, or leave --cluster out")
        options = UpOptions(
            data_dir=args.data_dir, port=args.port, nats_port=args.nats_port, tls=tls, cluster=args.cluster
        )
        return up(options)

    if args.command == "env":
        from .datadir import DataDirIdle, read_env

        try:
            sys.stdout.write(read_env(args.data_dir))
        except DataDirIdle as exc:
            raise SystemExit(f"dai: {exc}") from None
        return 0

    from . import services

    if args.command == "gateway":
        from democratic_ai.schemas import app_dsn
        from democratic_ai.services.gateway import GatewayConfig, body_ceiling_from_env
        from democratic_ai.services.metering import MeteringConfig, PublisherConfig

        billing = _billing_config()
        database_url = os.environ.get("DATABASE_APP_URL") or app_dsn(_env("DATABASE_URL"))
        flush = services.env_seconds(USAGE_FLUSH_ENV, PublisherConfig().max_delay)
        if flush <= 0:
            raise SystemExit(f"dai: {USAGE_FLUSH_ENV} must be a positive number of seconds")
        metering = MeteringConfig(publisher=PublisherConfig(max_delay=flush))
        try:
            ceiling = body_ceiling_from_env()
        except ValueError as exc:
            raise SystemExit(f"dai: {exc}") from None
        config = GatewayConfig(
            bus=_bus(),
            database_url=database_url,
            host=args.host,
            port=args.port,
            metering=metering,
            billing=billing,
            kek=_kek(),
            body_ceiling_bytes=ceiling,
        )
        run_until_signalled(lambda stop: services.run_gateway(config, stop))
    elif args.command == "bus-auth":
        auth, system = _bus(), _bus(Path(_env("DAI_BUS_SYS_CREDENTIAL_FILE")))
        seed = Path(_env("DAI_BUS_ISSUER_SEED_FILE")).read_text()
        run_until_signalled(lambda stop: services.run_busauth(auth, system, seed, stop))
    elif args.command == "streams":
        for name, replicas in asyncio.run(services.ensure_platform_streams(_bus(), _stream_replicas(args.replicas))):
            print(f"{name:24} {replicas} replica{'s' if replicas > 1 else ''}")
    elif args.command == "hub":
        from .metrics_endpoint import metrics_address

        metrics = metrics_address(args.metrics_port, args.metrics_host, HUB_METRICS_ENV)
        options = _bus()
        run_until_signalled(lambda stop: services.run_hub(options, stop, metrics))
    elif args.command == "module" and args.module_command == "mcp":
        from . import module_mcp

        return module_mcp.main(args)
    elif args.command == "module":
        from . import module_run

        return module_run.main(args.spec, args.credential_file, wait=args.wait)
    elif args.command == "projections" and args.projection_command == "run":
        from .metrics_endpoint import metrics_address

        metrics = metrics_address(args.metrics_port, args.metrics_host, PROJECTIONS_METRICS_ENV)
        share = services.projection_share(args.workers, args.worker)
        options, database_url = _bus(), _env("DATABASE_URL")
        run_until_signalled(
            lambda stop: services.run_projections(options, database_url, args.names, stop, metrics, share)
        )
    elif args.command == "identity" and args.identity_command == "add-super-admin":
        options, kek = _bus(), _kek()  # both before the password: no typing it twice for nothing
        user = asyncio.run(services.add_super_admin(options, kek, args.email, _password(args.password_stdin)))
        print(f"super admin {user.email} registered: user id {user.user_id}")
        print(f"sign in to the console with tenant {user.tenant_id}, e-mail {user.email} and that password")
    elif args.command == "identity":
        kid = asyncio.run(services.rotate_jwt_key(_bus(), _kek()))
        print(f"new JWT signing key {kid}; tokens signed by the previous key stay valid until they expire")
    elif args.command == "billing":
        _billing_config()
        closed = asyncio.run(services.close_billing_periods(_bus(), _env("DATABASE_URL"), args.tenant, args.period))
        for line in closed:
            print(line)
    elif args.command in ("backup", "restore"):
        from . import backup_commands

        return backup_commands.run(args, _env, _bus)
    elif args.command in ("status", "modules"):
        from . import status

        return status.run(args, _bus)
    else:
        from . import log_commands

        return log_commands.run(args, _env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
