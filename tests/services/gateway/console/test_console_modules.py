"""My modules, in Chromium: an author registers a module and sees its credential once, sees the
module's live instance once it runs with that credential, and its calls with their latency once
it is called, rotates the credential (the new one shown once, and working) and revokes the module."""

from __future__ import annotations

import contextlib
import re

import asyncpg
from nats.aio.client import Client as NATS
from playwright.async_api import Page, expect

from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import Module, capability

from support.browser import screenshots
from support.bus import module_connection
from support.calls import ended_calls
from support.client import http
from support.console import Admin, sign_in
from support.identity import login, new_user
from support.modules import registered
from support.names import unique
from support.waiting import eventually


def _module(module_id: str) -> Module:
    class Repeat(Module):
        @capability("test.repeat", input_schema={"type": "object"}, output_schema={"type": "object"})
        async def repeat(self) -> dict:
            return {}

    Repeat.module_id = module_id
    return Repeat()


# The page is asked for last, so that it closes before the gateway: a page that still reads (the
# Overview's live stream) would otherwise see the gateway go away.
async def test_an_author_registers_a_module_watches_it_run_and_rotates_its_credential(
    admin: Admin, nats_server: NatsServer, hub: Hub, bus_authorizer: None, nc: NATS, pool: asyncpg.Pool, page: Page
) -> None:
    module_id = unique("repeat")
    await sign_in(page, admin)
    await page.get_by_role("link", name="My modules").click()
    await expect(page.get_by_text("Your organisation has not registered a module yet.")).to_be_visible()
    form = page.get_by_role("form", name="Register a module")
    await form.get_by_label("Module id").fill(module_id)
    await form.get_by_label("Name").fill("<img src=x onerror=alert(1)>Repeat")
    await form.get_by_label("Capabilities").fill("test.repeat")
    await form.get_by_role("button", name="Register").click()

    shown = page.get_by_role("region", name=f"Module {module_id} registered: its credential")
    credential = (await shown.get_by_label("Credential").text_content() or "").strip()
    assert len(credential) > 20
    card = page.locator(f'[data-module="{module_id}"]')
    # What the author typed is text, never markup.
    await expect(card.get_by_role("heading", level=2)).to_contain_text("<img src=x onerror=alert(1)>Repeat")
    assert await card.locator("img").count() == 0
    await expect(card.get_by_text("No instance is running: start the module with its credential.")).to_be_visible()

    connection = await module_connection(nats_server, credential, module_id)
    module = _module(module_id)
    await module.start(connection)
    try:
        # The page looks again every 5 s: the running instance shows up without a reload.
        await expect(card.get_by_text("live", exact=True)).to_be_visible(timeout=12_000)
        await expect(card.locator(".module-instances").get_by_role("cell", name="test.repeat")).to_be_visible()
        calls = card.locator(".module-calls")
        await expect(calls.get_by_text("No calls to this module in this period.")).to_be_visible()

        # Called once, the module's calls show it with its latency (another period reads them again).
        await registered(hub, module)
        tokens = await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password})
        status, _ = await http(
            "POST",
            f"{admin.gateway.url}/v1/capabilities/test.repeat/invoke",
            json={},
            credential=tokens["access_token"],
        )
        assert status == 200
        await ended_calls(nc, pool, admin.tenant, 1)
        await calls.get_by_label("Period").select_option(label="Last 24 hours")
        row = calls.locator("tbody tr", has_text="test.repeat")
        latency = re.compile(r"^\d[\d.,]*$")  # p50 and p95 in ms: known, so numbers
        await expect(row.locator("td")).to_have_text(["test.repeat", "1", "0", "100%", latency, latency])
        await expect(calls.get_by_role("img", name=f"Calls and errors per minute of {module_id}")).to_be_visible()
        await shown.get_by_role("button", name="I have saved it").click()
        await expect(shown).to_have_count(0)
        await screenshots(page, "modules")

        # Shown once: after a reload the page holds only the credential's prefix.
        await page.reload()
        await expect(card.get_by_text("live", exact=True)).to_be_visible()
        assert credential not in await page.content()
        await expect(calls.get_by_label("Period")).to_have_value("60")  # the last hour, again
        await expect(row.locator("td").nth(1)).to_have_text("1")

        await card.get_by_role("button", name="Rotate credential").click()
        await page.get_by_role("dialog").get_by_role("button", name="Rotate credential").click()
        rotated = page.get_by_role("region", name=f"New credential of {module_id}")
        fresh = (await rotated.get_by_label("Credential").text_content() or "").strip()
        assert fresh and fresh != credential
        # The running instance is cut off the bus: its credential no longer works.
        await eventually(lambda: not connection.is_connected, "the old credential's connection cut", timeout=5)
    finally:
        await module.stop(grace=0.5)
        # Cut off, the connection retries with the old credential and is refused: nats-py's close
        # then writes what it queued meanwhile to a socket the server may just have reset.
        with contextlib.suppress(ConnectionResetError):
            await connection.close()
    again = await module_connection(nats_server, fresh, module_id, allow_reconnect=False)
    assert again.is_connected  # the new credential works on the bus
    await again.close()

    await card.get_by_role("button", name="Revoke").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(card.get_by_text("revoked", exact=True)).to_be_visible()
    await expect(card.get_by_role("button", name="Rotate credential")).to_have_count(0)


async def test_a_viewer_sees_modules_without_the_buttons_that_change_them(admin: Admin, page: Page) -> None:
    viewer = await new_user(admin.gateway, admin.tenant, "viewer")
    await sign_in(page, Admin(admin.gateway, admin.tenant, viewer["email"], viewer["password"], viewer["user_id"]))
    await page.get_by_role("link", name="My modules").click()
    await expect(page.get_by_role("heading", name="Your modules")).to_be_visible()
    await expect(page.get_by_role("form", name="Register a module")).to_have_count(0)
