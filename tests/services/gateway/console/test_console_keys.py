"""The console's API keys page, in Chromium: a new key's secret shown once (and working), the key
listed and revoked (and then refused), what a tenant writes shown as text, and only the controls
the caller's permissions allow — which the API refuses anyway."""

from __future__ import annotations

from playwright.async_api import Page, expect

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.identity import login, new_user
from support.waiting import eventually

SUMMARY = {"text": "NATS is fast. JetStream adds persistence. Streams store messages.", "max_length": 30}
HOSTILE = "<script>alert(1)</script><img src=x onerror=document.body.dataset.pwned=1>"


async def _call(admin: Admin, secret: str, capability: str = "text.summarize") -> int:
    status, _ = await http(
        "POST", f"{admin.gateway.url}/v1/capabilities/{capability}/invoke", json=SUMMARY, credential=secret
    )
    return status


async def _admin_token(admin: Admin) -> str:
    tokens = await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password})
    return tokens["access_token"]


async def test_a_new_keys_secret_shows_once_works_and_is_refused_once_revoked(
    page: Page, admin: Admin, example_modules: None
) -> None:
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=admin.gateway.url)
    await sign_in(page, admin)
    # The expiry is typed in the user's time zone and sent as an instant.
    await page.evaluate("localStorage.setItem('dai.console.timeZone', 'Asia/Tokyo')")
    await page.get_by_role("link", name="API keys").click()
    form = page.get_by_role("form", name="New API key")
    await form.get_by_label("Name", exact=True).fill("ci key")
    await expect(form.get_by_label("module:use", exact=True)).to_be_checked()
    await expect(form.get_by_label("module:read", exact=True)).to_be_checked()
    await form.get_by_label("Toolset").select_option(label="These capabilities…")
    await form.get_by_label("Capabilities").fill("text.*")
    await form.get_by_label("Expires").fill("2099-01-01T12:00")
    await form.get_by_label("Rate limit").fill("120")
    await form.get_by_role("button", name="Create key").click()

    box = page.get_by_role("region", name="New key's secret")
    await expect(box).to_be_visible()
    secret = (await box.get_by_label("Secret").inner_text()).strip()
    assert secret.startswith("dai_"), secret
    await box.get_by_role("button", name="Copy").click()
    await expect(box.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    row = page.get_by_role("row").filter(has_text="ci key")
    await expect(row).to_contain_text("text.*")
    await expect(row).to_contain_text("120 / min")
    await expect(row).to_contain_text("active")
    await screenshots(page, "keys")

    # The key works, within its toolset, and the API lists it as the page showed it.
    assert await _call(admin, secret) == 200
    assert await _call(admin, secret, "image.upscale") == 403
    status, listed = await http(
        "GET", f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys", credential=await _admin_token(admin)
    )
    assert status == 200, listed
    [key] = [k for k in listed["api_keys"] if k["name"] == "ci key"]
    assert key["expires_at"] == "2099-01-01T03:00:00Z"  # noon in Tokyo
    assert (key["capabilities"], key["rate_limit"], key["scopes"]) == (["text.*"], 120, ["module:read", "module:use"])
    assert secret.startswith(key["prefix"])

    # Shown once: not after a reload, nor kept anywhere the page could find it again.
    await page.reload()
    await expect(row).to_be_visible()
    await expect(page.get_by_role("region", name="New key's secret")).to_have_count(0)
    assert secret not in await page.content()
    assert secret not in page.url
    stored = await page.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
    assert secret not in stored

    # Revoked behind a confirmation; the gateway then refuses the key.
    await row.get_by_role("button", name="Revoke ci key").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Revoke the key ci key?")
    await page.keyboard.press("Escape")  # the dialog, by keyboard: Escape cancels
    await expect(row).to_contain_text("active")
    await row.get_by_role("button", name="Revoke ci key").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(row).to_contain_text("revoked")
    await expect(row.get_by_role("button", name="Revoke ci key")).to_have_count(0)
    await eventually(lambda: _refused(admin, secret), "the gateway to refuse the revoked key", timeout=10, interval=0.1)


async def _refused(admin: Admin, secret: str) -> bool:
    return await _call(admin, secret) == 401


async def test_a_key_name_a_tenant_wrote_is_text_not_markup(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="API keys").click()
    form = page.get_by_role("form", name="New API key")
    await form.get_by_label("Name", exact=True).fill(HOSTILE)
    await form.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("region", name="New key's secret")).to_contain_text(HOSTILE)
    await expect(page.get_by_role("row").filter(has_text=HOSTILE)).to_be_visible()
    assert await page.locator("main script, main img").count() == 0
    assert await page.evaluate("document.body.dataset.pwned") is None


async def test_the_form_shows_the_apis_refusal_with_its_code(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="API keys").click()
    form = page.get_by_role("form", name="New API key")
    await form.get_by_label("Name", exact=True).fill("no such toolset")
    await form.get_by_label("Toolset").select_option(label="These capabilities…")
    await form.get_by_label("Capabilities").fill("Not A Capability!")
    page.watch.expect(422, r"/api-keys$")  # type: ignore[attr-defined]
    await form.get_by_role("button", name="Create key").click()
    await expect(form.get_by_role("alert")).to_contain_text("VALIDATION_FAILED: ")
    await expect(page.get_by_role("region", name="New key's secret")).to_have_count(0)


async def test_a_developer_manages_only_their_own_keys(page: Page, admin: Admin) -> None:
    status, issued = await http(
        "POST",
        f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys",
        json={"name": "the admin's key"},
        credential=await _admin_token(admin),
    )
    assert status == 201, issued
    user = await new_user(admin.gateway, admin.tenant, "developer")
    developer = Admin(admin.gateway, admin.tenant, user["email"], user["password"], user["user_id"])
    await sign_in(page, developer)
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_text("Your API keys.", exact=False)).to_be_visible()
    form = page.get_by_role("form", name="New API key")
    # Scopes are the permissions the developer holds, and no more.
    await expect(form.get_by_label("api_key:create:own", exact=True)).to_be_visible()
    await expect(form.get_by_label("user:create", exact=True)).to_have_count(0)
    await form.get_by_label("Name", exact=True).fill("dev key")
    await form.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("region", name="New key's secret")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="dev key")
    await expect(page.get_by_role("row").filter(has_text="the admin's key")).to_have_count(0)
    await row.get_by_role("button", name="Revoke dev key").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(row).to_contain_text("revoked")
    # The API refuses them the admin's key, as the page did not offer it.
    token = (await login(admin.gateway, admin.tenant, user))["access_token"]
    status, refused = await http(
        "DELETE", f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys/{issued['key_id']}", credential=token
    )
    assert (status, refused["error"]["code"]) == (403, "FORBIDDEN")


async def test_a_viewer_sees_no_key_controls_and_the_api_refuses_them(page: Page, admin: Admin) -> None:
    status, issued = await http(
        "POST",
        f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys",
        json={"name": "the admin's key"},
        credential=await _admin_token(admin),
    )
    assert status == 201, issued
    user = await new_user(admin.gateway, admin.tenant, "viewer")
    viewer = Admin(admin.gateway, admin.tenant, user["email"], user["password"], user["user_id"])
    await sign_in(page, viewer)
    nav = page.get_by_role("navigation")
    await expect(nav.get_by_role("link", name="Catalog")).to_be_visible()
    await expect(nav.get_by_role("link", name="API keys")).to_have_count(0)
    await page.goto(f"{admin.gateway.url}/console/keys")  # the address typed: another page shows
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await expect(page.get_by_role("heading", name="API keys")).to_have_count(0)
    await expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    await expect(page.get_by_role("button", name="Revoke")).to_have_count(0)

    token = (await login(admin.gateway, admin.tenant, user))["access_token"]
    keys = f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys"
    for method, url, body in (
        ("POST", keys, {"name": "mine"}),
        ("GET", keys, None),
        ("DELETE", f"{keys}/{issued['key_id']}", None),
    ):
        status, refused = await http(method, url, json=body, credential=token)
        assert (status, refused["error"]["code"]) == (403, "FORBIDDEN"), (method, url, refused)


async def test_a_user_without_key_rights_sees_their_keys_but_no_create_or_revoke(page: Page, admin: Admin) -> None:
    user = await new_user(admin.gateway, admin.tenant, "user")
    await sign_in(page, Admin(admin.gateway, admin.tenant, user["email"], user["password"], user["user_id"]))
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_text("No API key yet.")).to_be_visible()
    await expect(page.get_by_role("form", name="New API key")).to_have_count(0)
    await expect(page.get_by_role("button", name="Create key")).to_have_count(0)


async def test_a_key_follows_a_toolset_of_the_tenant_and_the_page_speaks_japanese(page: Page, admin: Admin) -> None:
    token = await _admin_token(admin)
    status, body = await http(
        "PUT",
        f"{admin.gateway.url}/v1/tenants/{admin.tenant}/toolsets/summaries",
        json={"capabilities": ["text.summarize"]},
        credential=token,
    )
    assert status == 200, body
    await sign_in(page, admin)
    await page.get_by_role("link", name="API keys").click()
    form = page.get_by_role("form", name="New API key")
    await form.get_by_label("Name", exact=True).fill("summaries only")
    await form.get_by_label("Toolset").select_option(label="Toolset summaries: text.summarize")
    await expect(form.get_by_label("Capabilities")).to_be_hidden()
    await form.get_by_role("button", name="Create key").click()
    row = page.get_by_role("row").filter(has_text="summaries only")
    await expect(row).to_contain_text("toolset summaries")
    status, listed = await http("GET", f"{admin.gateway.url}/v1/tenants/{admin.tenant}/api-keys", credential=token)
    [key] = [k for k in listed["api_keys"] if k["name"] == "summaries only"]
    assert (key["toolset"], key["capabilities"]) == ("summaries", [])

    await page.get_by_label("Language").select_option("ja")
    await expect(page.get_by_role("heading", name="新しい API キー")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text="summaries only")).to_contain_text("ツールセット summaries")
    await expect(page.get_by_role("button", name="summaries only を失効")).to_be_visible()
    await screenshots(page, "keys-ja")
    await page.get_by_label("言語").select_option("en")
    await expect(page.get_by_role("heading", name="New API key")).to_be_visible()
