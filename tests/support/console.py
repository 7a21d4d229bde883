"""The console's users in the browser tests: who signs in, and signing in through the form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from playwright.async_api import Page

from democratic_ai.contracts import subjects
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import UserRoleChanged, encode_event
from democratic_ai.services.gateway.state import USERS

from support.gateway import Gateway
from support.identity import new_user
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


async def super_admin(gateway: Gateway, nc: NATS) -> Admin:
    """A super admin who signs in with a password, in the gateway's own (the platform's) tenant.

    The API creates no super admin (``dai up`` makes the platform's first one): a user is
    registered as a tenant admin, then promoted by an event appended to the log as an operator
    with the bus' rights would — the way ``issue_key`` records the gateway's super-admin key.
    """
    user = await new_user(gateway, gateway.tenant, "tenant_admin")
    promoted = UserRoleChanged(
        tenant_id=gateway.tenant, meta=Meta(at=datetime.now(UTC)), user_id=user["user_id"], role="super_admin"
    )
    subject = subjects.identity_subject(gateway.tenant, "user", user["user_id"])
    await nc.jetstream().publish(subject, encode_event(promoted))
    users = gateway.app[USERS].index.users if gateway.app is not None else {}
    await eventually(
        lambda: users[user["user_id"]].role == "super_admin", "the gateway to know the super admin", timeout=5
    )
    return Admin(gateway, gateway.tenant, user["email"], user["password"], user["user_id"])
