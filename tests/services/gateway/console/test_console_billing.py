"""The console's Billing page, in Chromium: the plan and the month so far; choosing another plan
shows its prorated effect (the API's preview) before anything changes, and confirming changes
it; an issued invoice opens in the page and downloads; without billing permissions there are no
plan controls, and the API refuses the change anyway."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import asyncpg
from nats.aio.client import Client as NATS
from playwright.async_api import Page, expect

from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.billing.periods import month_of, month_period
from democratic_ai.services.gateway.state import BILLING

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.identity import login, new_user
from support.projections import caught_up

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo


async def _subscribe(admin: Admin, nc: NATS, pool: asyncpg.Pool, plan: str, at: datetime) -> None:
    """Choose ``plan`` for the admin's tenant as if it had been chosen at ``at`` (the command, not the API)."""
    assert admin.gateway.app is not None
    await admin.gateway.app[BILLING].set_plan(Meta(at=at, actor=f"user:{admin.user_id}"), admin.tenant, plan)
    await caught_up(nc, pool, "billing")


async def _token(admin: Admin) -> str:
    user = {"email": admin.email, "password": admin.password}
    return (await login(admin.gateway, admin.tenant, user))["access_token"]


async def _plan(admin: Admin, token: str) -> dict:
    status, body = await http("GET", f"{admin.gateway.url}/v1/billing/plan", credential=token)
    assert status == 200, body
    return body


async def test_an_admin_previews_a_change_of_plan_then_confirms_it(
    page: Page, admin: Admin, nc: NATS, pool: asyncpg.Pool
) -> None:
    month = month_period(month_of(datetime.now(UTC), "Asia/Tokyo"), "Asia/Tokyo")
    await _subscribe(admin, nc, pool, "starter", month.start)
    await sign_in(page, admin)
    await page.get_by_role("link", name="Billing").click()

    plan = page.get_by_role("region", name="Your plan")
    await expect(plan.locator(".current-plan")).to_contain_text("Starter")
    await expect(plan.locator(".current-plan")).to_contain_text("¥4,900 a month")
    upcoming = page.get_by_role("region", name="This month so far")
    await expect(upcoming.get_by_role("cell", name=re.compile(r"^Starter plan \(monthly\), "))).to_be_visible()
    await expect(upcoming.locator("dl.totals")).to_contain_text("Tax (10%)")
    await expect(upcoming.locator("dl.totals")).to_contain_text("Total")
    await expect(page.get_by_role("region", name="Invoices")).to_contain_text("No invoices yet")

    # By keyboard: from the plan in force (Starter) the next one down is Pro; its effect shows at once.
    starter = plan.get_by_role("radio", name=re.compile(r"^Starter"))
    await expect(starter).to_be_checked()
    await starter.focus()
    await page.keyboard.press("ArrowDown")
    await expect(plan.get_by_role("radio", name=re.compile(r"^Pro"))).to_be_checked()
    preview = plan.locator(".preview")
    await expect(preview).to_contain_text("If you change to Pro (monthly) now:")
    await expect(preview).to_contain_text("Additional charge")  # 19,800 > 4,900: more for the rest of the month
    period = f"{month_of(datetime.now(UTC), 'Asia/Tokyo')[0]:04d}-{month_of(datetime.now(UTC), 'Asia/Tokyo')[1]:02d}"
    await expect(preview.get_by_role("heading", name=f"Your next invoice ({period}) will read")).to_be_visible()
    # The old plan up to now and the new one to the month's end, as the invoice will word them.
    await expect(
        preview.get_by_role("cell", name=re.compile(r"^Starter plan \(monthly\), .* of \d+ days$"))
    ).to_be_visible()
    await expect(
        preview.get_by_role("cell", name=re.compile(r"^Pro plan \(monthly\), .* of \d+ days$"))
    ).to_be_visible()
    confirm = preview.get_by_role("button", name="Confirm: change to Pro")
    await expect(confirm).to_be_visible()

    # The numbers are the API's: the same preview asked for now differs by seconds of proration at most.
    token = await _token(admin)
    status, asked = await http("GET", f"{admin.gateway.url}/v1/billing/plan/preview?plan=pro", credential=token)
    assert status == 200, asked
    unchanged_total = f"¥{asked['unchanged']['total']:,}"
    await expect(preview.locator("dl.effect")).to_contain_text(unchanged_total)  # the month without the change
    assert (await _plan(admin, token))["subscription"]["plan_id"] == "starter"  # nothing has changed yet
    await screenshots(page, "billing-change")

    await confirm.click()
    await expect(page.get_by_text("Your plan is now Pro.")).to_be_visible()
    await expect(plan.locator(".current-plan")).to_contain_text("Pro")
    await expect(plan.get_by_role("radio", name=re.compile(r"^Pro"))).to_be_checked()
    await expect(upcoming.get_by_role("cell", name=re.compile(r"^Pro plan \(monthly\), "))).to_be_visible()
    subscription = (await _plan(admin, token))["subscription"]
    assert (subscription["plan_id"], subscription["interval"]) == ("pro", "month")

    # Choosing the plan in force says so, with nothing to confirm.
    await page.get_by_role("button", name="Show the effect").click()
    await expect(preview).to_contain_text("You are on Pro already.")
    await expect(preview.get_by_role("button", name=re.compile("^Confirm"))).to_have_count(0)


async def test_an_issued_invoice_opens_in_the_page_and_downloads(
    page: Page, admin: Admin, nc: NATS, pool: asyncpg.Pool
) -> None:
    await _subscribe(admin, nc, pool, "starter", JAN_START)
    assert admin.gateway.app is not None
    closed = await admin.gateway.app[BILLING].close_period(admin.tenant, "2025-01")
    assert closed.created and closed.invoice is not None and closed.invoice.total == 5390
    await caught_up(nc, pool, "billing")
    invoice_id = f"{admin.tenant}-2025-01"

    await sign_in(page, admin)
    await page.goto(f"{admin.gateway.url}/console/billing")
    invoices = page.get_by_role("region", name="Invoices")
    row = invoices.get_by_role("row").filter(has_text=invoice_id)
    await expect(row).to_contain_text("2025-01")
    await expect(row).to_contain_text("¥5,390")
    await expect(row).to_contain_text("open")
    await row.get_by_role("button", name=invoice_id).click()

    opened = page.get_by_role("region", name=f"Invoice {invoice_id}")
    await expect(opened.get_by_role("heading", name=f"Invoice {invoice_id}")).to_be_focused()
    first_line = "Starter plan (monthly), 2025-01-01 00:00 – 2025-02-01 00:00 (Asia/Tokyo)"
    await expect(opened.get_by_role("cell", name=first_line, exact=True)).to_be_visible()
    totals = opened.locator("dl.totals")
    for label, amount in (("Subtotal", "4,900"), (r"Tax \(10%\)", "490"), ("Total", "5,390")):
        await expect(totals).to_contain_text(re.compile(rf"{label}(JP)?¥{amount}"))  # en-GB writes yen JP¥
    await expect(opened.locator("dl.facts")).to_contain_text("Democratic_AI")  # the seller
    assert "invoice=" in page.url  # the opened invoice is in the address, to come back to

    async with page.expect_download() as html_download:
        await opened.get_by_role("button", name="Download (HTML)").click()
    html = await html_download.value
    assert html.suggested_filename == f"{invoice_id}.html"
    text = (await html.path()).read_text(encoding="utf-8")
    assert "<html" in text.lower() and "¥5,390" in text
    async with page.expect_download() as json_download:
        await opened.get_by_role("button", name="Download (JSON)").click()
    document = json.loads((await (await json_download.value).path()).read_text(encoding="utf-8"))
    assert (document["invoice_id"], document["total"], len(document["lines"])) == (invoice_id, 5390, 4)
    await screenshots(page, "billing")

    await opened.get_by_role("button", name="Close the invoice").click()
    await expect(opened).to_have_count(0)
    assert "invoice=" not in page.url


async def test_in_japanese_the_page_speaks_japanese(page: Page, admin: Admin, nc: NATS, pool: asyncpg.Pool) -> None:
    await _subscribe(admin, nc, pool, "starter", JAN_START)
    await sign_in(page, admin)
    await page.goto(f"{admin.gateway.url}/console/billing")
    await page.get_by_label("Language").first.select_option("ja")
    await expect(page.get_by_role("heading", name="現在のプラン")).to_be_visible()
    await expect(page.get_by_role("region", name="今月のここまでの請求").locator("dl.totals")).to_contain_text("消費税")
    await expect(page.get_by_role("radio", name="Pro")).to_be_visible()
    await screenshots(page, "billing-ja")
    await page.get_by_label("言語").first.select_option("en")
    await expect(page.get_by_role("heading", name="Your plan")).to_be_visible()


async def test_without_billing_permissions_there_are_no_plan_controls_and_the_api_refuses(
    page: Page, admin: Admin, nc: NATS, pool: asyncpg.Pool
) -> None:
    await _subscribe(admin, nc, pool, "starter", JAN_START)
    admin_token = await _token(admin)
    developer = await new_user(admin.gateway, admin.tenant, "developer", credential=admin_token)
    who = Admin(admin.gateway, admin.tenant, developer["email"], developer["password"], developer["user_id"])
    await sign_in(page, who)
    await expect(page.get_by_role("link", name="Catalog")).to_be_visible()
    await expect(page.get_by_role("link", name="Billing")).to_have_count(0)
    await page.goto(f"{admin.gateway.url}/console/billing")  # by its address: another page shows
    await expect(page.get_by_role("heading", level=1)).not_to_have_text("Billing")
    for name in ("Confirm: change to Pro", "Cancel plan", "Show the effect"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.get_by_role("radio")).to_have_count(0)

    token = (await login(admin.gateway, admin.tenant, developer))["access_token"]
    gateway = admin.gateway.url
    status, body = await http("PUT", f"{gateway}/v1/billing/plan", json={"plan": "pro"}, credential=token)
    assert status == 403 and body["error"]["details"]["needed"] == ["billing:update"], body
    status, body = await http("GET", f"{gateway}/v1/billing/plan/preview?plan=pro", credential=token)
    assert status == 403 and body["error"]["code"] == "FORBIDDEN", body
    # A key that may read billing but not change it is refused the change as well.
    status, key = await http(
        "POST",
        f"{gateway}/v1/tenants/{admin.tenant}/api-keys",
        json={"name": "reader", "scopes": ["billing:read"]},
        credential=admin_token,
    )
    assert status == 201, key
    status, body = await http("PUT", f"{gateway}/v1/billing/plan", json={"plan": "pro"}, credential=key["api_key"])
    assert status == 403 and body["error"]["details"]["needed"] == ["billing:update"], body
    status, body = await http("GET", f"{gateway}/v1/billing/plan/preview?plan=pro", credential=key["api_key"])
    assert status == 200 and body["changes"] is True, body
    assert (await _plan(admin, admin_token))["subscription"]["plan_id"] == "starter"
