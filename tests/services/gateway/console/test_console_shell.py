"""The console's shell in Chromium: three languages (switched and remembered), and a tenant's own
words shown as text, never as markup."""

from __future__ import annotations

from playwright.async_api import Page, expect

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.gateway import Gateway
from support.identity import new_user
from support.names import unique

HOSTILE = '<script>window.hacked = 1</script><img src=x onerror="window.hacked = 2"> & Co'


async def test_switch_to_japanese_and_chinese_and_back(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    language = page.get_by_label("Language")
    await language.select_option("ja")
    await expect(page.get_by_role("link", name="概要")).to_be_visible()
    await expect(page.get_by_role("button", name="サインアウト")).to_be_visible()
    assert await page.evaluate("document.documentElement.lang") == "ja"
    await screenshots(page, "overview-ja")
    await page.reload()  # remembered
    await expect(page.get_by_role("link", name="概要")).to_be_visible()
    await page.get_by_label("言語").select_option("zh")
    await expect(page.get_by_role("link", name="概览")).to_be_visible()
    await page.get_by_label("语言").select_option("en")
    await expect(page.get_by_role("link", name="Overview")).to_be_visible()


async def test_the_browser_language_is_the_first_one(page: Page, admin: Admin) -> None:
    context = await page.context.browser.new_context(locale="zh-CN")  # type: ignore[union-attr]
    chinese = await context.new_page()
    try:
        await chinese.goto(f"{admin.gateway.url}/console")
        await expect(chinese.get_by_role("button", name="登录")).to_be_visible()
    finally:
        await context.close()


async def test_a_tenant_name_with_markup_renders_as_text(page: Page, gateway: Gateway) -> None:
    tenant = unique("hostile")
    status, body = await http(
        "POST", f"{gateway.url}/v1/tenants", json={"tenant_id": tenant, "name": HOSTILE}, credential=gateway.api_key
    )
    assert status == 201, body
    user = await new_user(gateway, tenant, "tenant_admin")
    await sign_in(page, Admin(gateway, tenant, user["email"], user["password"], user["user_id"]))
    await expect(page.locator("header .who")).to_contain_text(HOSTILE)
    assert await page.evaluate("window.hacked") is None
    assert await page.locator("header script, header img").count() == 0
