"""Operations, in Chromium: a super admin suspends and reinstates a tenant whose name is markup
(shown as text), creates a tenant with its first administrator, sees the projections and retries
a quarantined event until it applies; a tenant admin sees no Operations page, and the ops API
refuses them."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NATS
from playwright.async_api import Browser, Dialog, Page, expect

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.services.identity import KeyEncryptionKey

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in, super_admin
from support.gateway import Gateway
from support.identity import PASSWORD, login
from support.names import unique
from support.quarantine import PoisonValues, fix_poison, quarantine_one

SCRIPT = "<script>alert(1)</script>"


async def _tenant_named(gateway: Gateway, name: str, tenant: str | None = None) -> str:
    tenant = tenant or unique("xss")
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants", json={"tenant_id": tenant, "name": name}, credential=gateway.api_key
    )
    assert status == 201, body
    return tenant


async def _suspended(gateway: Gateway, tenant: str) -> bool:
    status, body = await http("GET", f"{gateway.url}/v1/tenants/{tenant}", credential=gateway.api_key)
    assert status == 200, body
    return body["suspended"]


async def test_a_super_admin_suspends_and_reinstates_a_tenant_named_with_markup(
    gateway: Gateway, ops_desk: None, nats_server: NatsServer, kek: KeyEncryptionKey, page: Page
) -> None:
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:  # an alert() would be the markup running
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    tenant = await _tenant_named(gateway, SCRIPT)
    await sign_in(page, await super_admin(gateway, nats_server, kek))
    await page.get_by_role("link", name="Operations").click()
    tenants = page.get_by_role("region", name="Tenants")
    # The session's tenants are more than a table shows: the filter finds this one, and is kept
    # while the panel refreshes after each change.
    await tenants.get_by_label("Filter tenants").fill(tenant)
    row = tenants.get_by_role("row").filter(has_text=tenant)
    await expect(row.get_by_role("cell", name=SCRIPT, exact=True)).to_be_visible()
    await expect(row.get_by_text("active", exact=True)).to_be_visible()

    await row.get_by_role("button", name=f"Suspend {tenant}").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(f"Suspend tenant {tenant} (“{SCRIPT}”)?")
    await dialog.get_by_label("Reason").fill("unpaid invoices")
    await dialog.get_by_role("button", name="Suspend").click()
    await expect(page.get_by_text(f"{tenant} is suspended.")).to_be_visible()
    await expect(row.get_by_text("suspended", exact=True)).to_be_visible()
    assert await _suspended(gateway, tenant)

    # Cancelling changes nothing; confirming with a reason reinstates.
    await row.get_by_role("button", name=f"Reinstate {tenant}").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert await _suspended(gateway, tenant)
    await row.get_by_role("button", name=f"Reinstate {tenant}").click()
    await page.get_by_role("dialog").get_by_label("Reason").fill("paid")
    await page.get_by_role("dialog").get_by_role("button", name="Reinstate").click()
    await expect(row.get_by_text("active", exact=True)).to_be_visible()
    assert not await _suspended(gateway, tenant)
    assert dialogs == []

    streams = page.get_by_role("region", name="Streams")
    await expect(streams.get_by_role("img", name="Bytes by stream")).to_be_visible()
    await expect(streams.get_by_role("cell", name="IDENTITY", exact=True)).to_be_visible()


async def _refusal(gateway: Gateway, path: str, body: dict, status: int) -> str:
    """What the console shows for the API's refusal of ``body`` (lib/api.js describe): asked of the API itself."""
    answered, answer = await http("POST", f"{gateway.url}{path}", json=body, credential=gateway.api_key)
    assert answered == status, answer
    error = answer["error"]
    where = error["details"].get("path") or error["details"].get("field")
    return f"{error['code']}: {error['message']}" + (f" ({where})" if where else "")


async def test_a_super_admin_creates_a_tenant_whose_first_administrator_then_signs_in(
    gateway: Gateway, ops_desk: None, nats_server: NatsServer, kek: KeyEncryptionKey, page: Page, browser: Browser
) -> None:
    for status, url in ((422, r"/v1/tenants$"), (409, r"/v1/tenants$"), (422, r"/v1/tenants/[^/]+/users$")):
        page.watch.expect(status, url)  # type: ignore[attr-defined]
    await sign_in(page, await super_admin(gateway, nats_server, kek))
    await page.get_by_role("link", name="Operations").click()
    form = page.get_by_role("form", name="New tenant")
    tenant, email = unique("new"), f"{unique('first')}@example.com"
    await form.get_by_label("Name").fill("Newco")
    await form.get_by_label("Administrator's e-mail").fill(email)
    await form.get_by_label("Administrator's password").fill("too short")

    # An id the API refuses, then one that is taken: its error, and no tenant.
    for refused, status in (("Not A Tenant", 422), (gateway.tenant, 409)):
        shown = await _refusal(gateway, "/v1/tenants", {"tenant_id": refused, "name": "Newco"}, status)
        await form.get_by_label("Tenant id").fill(refused)
        await form.get_by_role("button", name="Create tenant").click()
        await expect(form.get_by_role("alert")).to_have_text(shown)

    # The tenant is made, its administrator refused: said so, the tenant kept, and a retry adds only the admin.
    await form.get_by_label("Tenant id").fill(tenant)
    await form.get_by_role("button", name="Create tenant").click()
    weak = await _refusal(gateway, f"/v1/tenants/{tenant}/users", {"email": email, "password": "too short"}, 422)
    await expect(form.get_by_role("alert")).to_have_text(
        f"Tenant {tenant} was created, but its administrator was not: {weak}. The tenant stays; correct the"
        " e-mail or password and add the administrator again."
    )
    tenants = page.get_by_role("region", name="Tenants")
    await tenants.get_by_label("Filter tenants").fill(tenant)
    await expect(tenants.get_by_role("row").filter(has_text=tenant)).to_be_visible()
    await expect(form.get_by_label("Tenant id")).not_to_be_editable()
    await screenshots(page, "operations-new-tenant")
    await form.get_by_label("Administrator's password").fill(PASSWORD)
    await form.get_by_role("button", name="Add the administrator").click()
    await expect(page.get_by_text(f"Tenant {tenant} is ready: {email} signs in as its administrator.")).to_be_visible()
    await expect(form.get_by_role("button", name="Create tenant")).to_be_visible()
    await expect(form.get_by_label("Tenant id")).to_have_value("")

    status, body = await http("GET", f"{gateway.url}/v1/tenants/{tenant}/users", credential=gateway.api_key)
    assert status == 200, body
    [admin] = body["users"]
    assert (admin["email"], admin["role"]) == (email, "tenant_admin")
    status, body = await http("GET", f"{gateway.url}/v1/tenants/{tenant}", credential=gateway.api_key)
    assert (status, body["name"]) == (200, "Newco"), body

    # The new administrator, in a browser of their own.
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    try:
        theirs = await context.new_page()
        await sign_in(theirs, Admin(gateway, tenant, email, PASSWORD, admin["user_id"]))
        await expect(theirs.get_by_role("link", name="Users")).to_be_visible()
        await expect(theirs.get_by_role("link", name="Operations")).to_have_count(0)
    finally:
        await context.close()


async def test_a_super_admin_sees_the_projections_and_retries_a_quarantined_event(
    gateway: Gateway,
    ops_desk: None,
    poison: PoisonValues,
    nc: NATS,
    nats_server: NatsServer,
    kek: KeyEncryptionKey,
    pool: asyncpg.Pool,
    page: Page,
) -> None:
    sequence = await quarantine_one(nc, pool, poison)
    await sign_in(page, await super_admin(gateway, nats_server, kek))
    await page.goto(f"{gateway.url}/console/operations")
    projections = page.get_by_role("region", name="Projections")
    for name in ("identity", "usage", "billing", "registry", poison.name):
        await expect(projections.get_by_role("cell", name=name, exact=True).first).to_be_visible()
    letter = projections.get_by_role("row").filter(has_text=f"#{sequence}")
    await expect(letter).to_contain_text("DataError")
    retry = letter.get_by_role("button", name=f"Retry {poison.name} event {sequence}")

    await retry.click()  # before the fix: it fails again and stays
    await expect(page.get_by_text(f"Event {sequence} still fails (attempt 2); it stays quarantined.")).to_be_visible()
    await expect(letter.get_by_role("cell", name="2", exact=True)).to_be_visible()
    await screenshots(page, "operations")

    await fix_poison(pool)
    await retry.click()
    await expect(page.get_by_text(f"Event {sequence} applied; it left the quarantine.")).to_be_visible()
    await expect(letter).to_have_count(0)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT value FROM ops_poison_values WHERE sequence = $1", sequence) == 2**40

    await page.get_by_label("Language").first.select_option("ja")
    # (Other tests' poison in the session's streams may be quarantined here too: only this one is known.)
    projections = page.get_by_role("region", name="プロジェクション")
    await expect(projections.get_by_role("cell", name=poison.name, exact=True).first).to_be_visible()
    await page.get_by_label("言語").first.select_option("en")
    await expect(page.get_by_role("region", name="Projections")).to_be_visible()


async def test_a_tenant_admin_sees_no_operations_and_the_ops_api_refuses_them(
    admin: Admin, ops_desk: None, page: Page
) -> None:
    await sign_in(page, admin)
    await expect(page.get_by_role("link", name="My modules")).to_be_visible()
    await expect(page.get_by_role("link", name="Operations")).to_have_count(0)
    await page.goto(f"{admin.gateway.url}/console/operations")  # falls back to a page they may see
    await expect(page.get_by_role("heading", level=1)).not_to_have_text("Operations")
    token = (await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password}))[
        "access_token"
    ]
    for path in ("/v1/ops/projections", "/v1/ops/streams", "/v1/ops/instances"):
        status, body = await http("GET", f"{admin.gateway.url}{path}", credential=token)
        assert (status, body["error"]["code"]) == (403, "FORBIDDEN"), (path, body)


async def test_the_tenants_table_shows_the_first_fifty_matches_of_its_filter(
    gateway: Gateway, ops_desk: None, nats_server: NatsServer, kek: KeyEncryptionKey, page: Page
) -> None:
    family = unique("many")
    for i in range(53):
        await _tenant_named(gateway, f"Branch {i}", f"{family}-{i:02d}")
    await sign_in(page, await super_admin(gateway, nats_server, kek))
    await page.get_by_role("link", name="Operations").click()
    tenants = page.get_by_role("region", name="Tenants")
    await tenants.get_by_label("Filter tenants").fill(family)
    await expect(tenants.get_by_text("3 more match: narrow the filter to see them.")).to_be_visible()
    await expect(tenants.get_by_role("row").filter(has_text=family)).to_have_count(50)
    await tenants.get_by_label("Filter tenants").fill("Branch 52")  # names are searched too
    await expect(tenants.get_by_role("row").filter(has_text=family)).to_have_count(1)
    await expect(tenants.get_by_text("more match")).to_have_count(0)
