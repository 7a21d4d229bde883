"""The console's users in the browser tests: who signs in, and signing in through the form."""

from __future__ import annotations

from dataclasses import dataclass

from playwright.async_api import Page

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.services import add_super_admin
from democratic_ai.services.gateway.state import USERS
from democratic_ai.services.identity import KeyEncryptionKey

from support.gateway import Gateway
from support.identity import PASSWORD
from support.names import unique
from support.waiting import eventually

__all__ = ["Admin", "sign_in", "super_admin"]


@dataclass
class Admin:
    """A tenant of its own and its admin, who signs in with e-mail and password."""

    gateway: Gateway
    tenant: str
    email: str
    password: str
    user_id: str


async def sign_in(page: Page, who: Admin, tenant: str | None = None) -> None:
    """Open the console and sign in as ``who`` through its form."""
    await page.goto(f"{who.gateway.url}/console")
    await page.get_by_label("Organisation (tenant)").fill(tenant or who.tenant)
    await page.get_by_label("E-mail").fill(who.email)
    await page.get_by_label("Password").fill(who.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("button", name="Sign out").wait_for()


async def super_admin(gateway: Gateway, nats_server: NatsServer, kek: KeyEncryptionKey) -> Admin:
    """A super admin who signs in with a password, in the ``system`` tenant.

    Made the one way there is: the operator's command (``dai identity add-super-admin``, here
    its function), with the operator's bus credential and the platform's KEK.
    """
    email = f"{unique('root')}@example.com"
    user = await add_super_admin(nats_server.bus("operator"), kek, email, PASSWORD)
    users = gateway.app[USERS].index.users if gateway.app is not None else {}
    await eventually(lambda: user.user_id in users, "the gateway to know the super admin", timeout=5)
    return Admin(gateway, user.tenant_id, email, PASSWORD, user.user_id)
