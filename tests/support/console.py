"""The console's users in the browser tests: who signs in, and signing in through the form."""

from __future__ import annotations

from dataclasses import dataclass

from playwright.async_api import Page

from support.gateway import Gateway

__all__ = ["Admin", "sign_in"]


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
