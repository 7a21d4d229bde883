"""The console's Overview and Live calls pages in Chromium: a call made from the try-it form shows
in Live calls within 2 s and opens to its request, answer and metering; the Overview's charts
count it live."""

from __future__ import annotations

import time

from playwright.async_api import Page, expect

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.identity import login


async def test_a_call_from_try_it_shows_in_live_calls_within_two_seconds(
    page: Page, admin: Admin, example_modules: None
) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Live calls").click()
    await expect(page.locator("main").get_by_role("status")).to_contain_text("Live")
    # Try it in a second tab of the same session, while this one watches.
    other = await page.context.new_page()
    await other.goto(f"{admin.gateway.url}/console/catalog?capability=text.analyze")
    capability = other.locator('[data-capability="text.analyze"]')
    await capability.get_by_label("text *").fill("Watch this call. It is live.")
    await capability.get_by_role("button", name="Run").click()
    await expect(capability.get_by_role("status")).to_contain_text("Answered in")
    answered = time.monotonic()
    row = page.locator("table.calls tbody tr", has_text="text.analyze")
    await expect(row).to_be_visible(timeout=2_000)
    assert time.monotonic() - answered < 2.0
    await expect(row).to_contain_text("success")
    await row.get_by_role("button").click()
    detail = page.locator(".call-detail")
    await expect(detail.get_by_label("Request")).to_contain_text("Watch this call")
    await expect(detail.get_by_label("Answer")).to_contain_text("sentence_count")
    await expect(detail.get_by_role("cell", name="calls", exact=True)).to_be_visible()  # metered: api_calls
    await screenshots(page, "calls")
    await other.close()


async def test_the_overview_counts_calls_live(page: Page, admin: Admin, example_modules: None) -> None:
    await sign_in(page, admin)  # the overview is the first page
    chart = page.get_by_role("img", name="Calls per minute")
    await expect(chart).to_be_visible()
    calls_card = page.locator(".card", has_text="Calls, last hour")
    await expect(calls_card).to_contain_text("0")
    tokens = await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password})
    for _ in range(3):
        status, _ = await http(
            "POST",
            f"{admin.gateway.url}/v1/capabilities/text.analyze/invoke",
            json={"text": "Counted live."},
            credential=tokens["access_token"],
        )
        assert status == 200
    await expect(calls_card.locator(".value")).to_have_text("3", timeout=5_000)
    await page.reload()  # and from the read model, after a reload, with their latency
    await expect(page.locator(".card", has_text="Calls, last hour").locator(".value")).to_have_text("3")
    await expect(page.get_by_role("img", name="Latency p95 by capability")).to_contain_text("text.analyze")
    await expect(page.get_by_role("img", name="Limits left", exact=False)).to_be_visible()
    await screenshots(page, "overview")
