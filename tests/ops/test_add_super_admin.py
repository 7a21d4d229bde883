"""``dai identity add-super-admin``: the operator makes a super admin who signs in with a password.

The command runs as a process, as an operator runs it: the operator's bus credential and the KEK
from the environment, the password on standard input or typed at a terminal — never in argv.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from democratic_ai.contracts import subjects
from democratic_ai.contracts.identity_events import UserRegistered, decode_event
from democratic_ai.contracts.streams import IDENTITY_STREAM
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.services.identity import KeyEncryptionKey
from democratic_ai.services.identity.principal import sha256_hex

from support.client import http
from support.gateway import Gateway
from support.names import unique
from support.paths import REPO
from support.readme import run_script, section_scripts
from support.waiting import eventually

pytestmark = pytest.mark.slow

PASSWORD = "operators' own passphrase 7"
DAI = [sys.executable, "-m", "democratic_ai.ops.cli", "identity", "add-super-admin"]


def _environment(nats_server: NatsServer, kek: KeyEncryptionKey | None) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], **nats_server.environment("operator")}
    if kek is not None:
        env["DAI_KEK"] = kek.to_text()
    return env


def _email() -> str:
    return f"{unique('root')}@example.com"


async def _add(env: dict[str, str], email: str, stdin: str | None) -> subprocess.CompletedProcess[str]:
    args = [*DAI, "--email", email] + (["--password-stdin"] if stdin is not None else [])
    return await asyncio.to_thread(
        subprocess.run,
        args,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _registrations(nc: NATS, email: str) -> int:
    """How many registrations the log holds on ``email``'s subject in the system tenant (0 or 1)."""
    subject = subjects.identity_subject("system", "email", sha256_hex(email)[:32])
    try:
        await nc.jetstream().get_last_msg(IDENTITY_STREAM, subject)
    except NotFoundError:
        return 0
    return 1


async def test_the_new_super_admin_signs_in_to_the_system_tenant_and_lists_tenants(
    gateway: Gateway, nats_server: NatsServer, kek: KeyEncryptionKey, nc: NATS
) -> None:
    email = _email()
    done = await _add(_environment(nats_server, kek), email.upper(), f"{PASSWORD}\n")
    assert done.returncode == 0, done.stderr
    registered, how = done.stdout.splitlines()
    user_id = registered.rsplit(" ", 1)[1]
    assert registered == f"super admin {email} registered: user id {user_id}"
    assert how == f"sign in to the console with tenant system, e-mail {email} and that password"
    assert PASSWORD not in done.stdout + done.stderr

    subject = subjects.identity_subject("system", "email", sha256_hex(email)[:32])
    event = decode_event((await nc.jetstream().get_last_msg(IDENTITY_STREAM, subject)).data)
    assert isinstance(event, UserRegistered)
    assert (event.user_id, event.role, event.tenant_id) == (user_id, "super_admin", "system")
    assert event.meta.actor.startswith("operator:") and event.meta.user_agent == "dai identity add-super-admin"
    assert event.password_hash.startswith("dai-se1.")  # sealed with the user's data key, never in clear

    async def signed_in() -> dict | None:
        status, body = await http(
            "POST", f"{gateway.url}/v1/auth/login", json={"tenant_id": "system", "email": email, "password": PASSWORD}
        )
        return body if status == 200 else None

    tokens = await eventually(signed_in, "the gateway to know the new super admin", timeout=5)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["tenant_id"], claims["role"]) == (user_id, "system", "super_admin")
    status, body = await http("GET", f"{gateway.url}/v1/tenants", credential=tokens["access_token"])
    assert status == 200, body
    assert {"system", gateway.tenant} <= {t["tenant_id"] for t in body["tenants"]}

    # The API still makes no super admin, not even for one.
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/tenants/system/users",
        json={"email": _email(), "password": PASSWORD, "role": "super_admin"},
        credential=tokens["access_token"],
    )
    assert (status, body["error"]["code"]) == (403, "FORBIDDEN"), body


async def test_an_e_mail_taken_in_the_system_tenant_is_refused(
    gateway: Gateway, nats_server: NatsServer, kek: KeyEncryptionKey
) -> None:
    email, env = _email(), _environment(nats_server, kek)
    assert (await _add(env, email, f"{PASSWORD}\n")).returncode == 0
    again = await _add(env, email, "another good passphrase 9\n")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == "dai: a user with this e-mail already exists in the tenant\n"


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        (None, "short 1\n", "dai: the password must have at least 12 characters"),
        (None, "aaaaaaaaaaaaaaaa\n", "dai: the password must use at least 5 different characters"),
        ("rootadmin@example.com", "my rootadmin passphrase\n", "dai: the password must not contain the e-mail address"),
        ("not an e-mail", f"{PASSWORD}\n", "dai: the e-mail address is not valid"),
        (None, "", "dai: --password-stdin read nothing: write the password as one line to standard input"),
    ],
)
async def test_a_bad_e_mail_or_weak_password_is_one_line_and_appends_nothing(
    nats_server: NatsServer, kek: KeyEncryptionKey, nc: NATS, email: str | None, password: str, message: str
) -> None:
    email = email or _email()
    done = await _add(_environment(nats_server, kek), email, password)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"{message}\n")
    if "@" in email:
        assert await _registrations(nc, email) == 0


async def test_without_the_kek_it_says_so_before_asking_for_a_password(nats_server: NatsServer, nc: NATS) -> None:
    email = _email()
    done = await _add(_environment(nats_server, None), email, f"{PASSWORD}\n")
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("dai: No key-encryption key is configured: set DAI_KEK_FILE"), line
    assert await _registrations(nc, email) == 0


async def test_without_a_terminal_or_password_stdin_it_asks_for_password_stdin(
    nats_server: NatsServer, kek: KeyEncryptionKey
) -> None:
    done = await _add(_environment(nats_server, kek), _email(), None)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "dai: standard input is not a terminal: give the password on it with --password-stdin\n"


def _at_a_terminal(env: dict[str, str], email: str, typed: list[str]) -> tuple[int, str]:
    """Run the command on a new terminal, type each of ``typed`` after its prompt; its code and screen."""
    controller, terminal = pty.openpty()
    # A session of its own: /dev/tty is not the test's terminal, so getpass uses this one (stdin).
    process = subprocess.Popen(
        [*DAI, "--email", email],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
        cwd=REPO,
    )
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 60
    prompts = [b"Password: ", b"Password (again): "][: len(typed)]
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the command ended and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            if prompts and screen.endswith(prompts[0]):
                prompts.pop(0)
                os.write(controller, typed.pop(0).encode() + b"\n")
        return process.wait(timeout=30), screen.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


async def test_at_a_terminal_the_password_is_asked_twice_and_never_shown(
    gateway: Gateway, nats_server: NatsServer, kek: KeyEncryptionKey, nc: NATS
) -> None:
    env, email = _environment(nats_server, kek), _email()
    code, screen = await asyncio.to_thread(_at_a_terminal, env, email, [PASSWORD, "a different passphrase"])
    assert code == 1, screen
    assert "dai: the two passwords differ; nothing was registered" in screen
    assert await _registrations(nc, email) == 0

    code, screen = await asyncio.to_thread(_at_a_terminal, env, email, [PASSWORD, PASSWORD])
    assert code == 0, screen
    assert "Password: " in screen and "Password (again): " in screen
    assert f"super admin {email} registered" in screen
    assert PASSWORD not in screen  # not echoed as it was typed, nor printed after
    assert await _registrations(nc, email) == 1


def test_no_route_of_the_gateway_makes_a_super_admin() -> None:
    """register_super_admin is the operator's: nothing under services/ (the HTTP edge) calls it."""
    callers = [
        path.relative_to(REPO)
        for path in (REPO / "services").rglob("*.py")
        if "register_super_admin(" in path.read_text(encoding="utf-8") and path.name != "service.py"
    ]
    assert callers == []
    assert "register_super_admin(" in (REPO / "ops" / "services.py").read_text(encoding="utf-8")


async def test_the_readme_example_makes_a_super_admin_who_lists_the_tenants(
    gateway: Gateway, nats_server: NatsServer, kek: KeyEncryptionKey, tmp_path: Path
) -> None:
    [script] = [b for b in section_scripts(REPO / "README.md", "## The console") if "add-super-admin" in b]
    # `dai env` reads a running dai up's data dir; here the session's server stands in for one, and
    # the e-mail is one no other test of the session uses.
    assert 'eval "$(.venv/bin/dai env)"\n' in script and "ops@example.test" in script
    email = _email()
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in _environment(nats_server, kek).items())
    script = script.replace('eval "$(.venv/bin/dai env)"\n', exports).replace("ops@example.test", email)
    script = f"GW={gateway.url}; JSON='Content-Type: application/json'\n{script}"
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the README runs .venv/bin/dai
    out, _ = await run_script(script, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    lines = out.splitlines()
    assert lines[0].startswith(f"super admin {email} registered: user id ")
    assert lines[1] == f"sign in to the console with tenant system, e-mail {email} and that password"
    assert {"system", gateway.tenant} <= set(lines[2:])  # what the super admin's token lists


async def test_a_kek_that_is_not_the_platforms_is_refused_and_appends_nothing(
    gateway: Gateway, nats_server: NatsServer, nc: NATS
) -> None:
    """The gateway has sealed its signing key with the platform's KEK; another KEK opens none of
    them, so a password sealed with it could never be checked: refused before anything is written."""
    email = _email()
    done = await _add(_environment(nats_server, KeyEncryptionKey.generate()), email, f"{PASSWORD}\n")
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("dai: this key-encryption key opens none of the platform's"), line
    assert line.endswith("is DAI_KEK_FILE (or DAI_KEK) the key-encryption key the gateways use?"), line
    assert await _registrations(nc, email) == 0
