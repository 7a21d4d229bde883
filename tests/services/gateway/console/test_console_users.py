"""The console's users page, in Chromium: a user made in the page signs in, their role changes,
they are deactivated (and can no longer sign in); an e-mail a tenant wrote is text; a viewer gets
none of the controls, and the API refuses them the same."""

from __future__ import annotations

from playwright.async_api import Browser, Page, expect

from support.browser import PageWatch, screenshots
from support.client import http
from support.console import Admin, sign_in
from support.identity import PASSWORD, login, new_user
from support.names import unique


async def _users(admin: Admin) -> dict[str, dict]:
    token = (await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password}))[
        "access_token"
    ]
    status, body = await http("GET", f"{admin.gateway.url}/v1/tenants/{admin.tenant}/users", credential=token)
    assert status == 200, body
    return {u["email"]: u for u in body["users"]}


async def _create(page: Page, email: str, role: str) -> None:
    form = page.get_by_role("form", name="New user")
    await form.get_by_label("E-mail").fill(email)
    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_label("Role").select_option(label=role)
    await form.get_by_role("button", name="Create user").click()


async def test_a_user_made_in_the_page_signs_in_changes_role_and_is_deactivated(
    browser: Browser, page: Page, admin: Admin
) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Users").click()
    email = f"{unique('dev')}@example.com"
    await _create(page, email, "developer")
    row = page.get_by_role("row").filter(has_text=email)
    await expect(row.get_by_label(f"Role of {email}", exact=True)).to_have_value("developer")
    await expect(row).to_contain_text("active")
    created = (await _users(admin))[email]
    assert (created["role"], created["active"]) == ("developer", True)

    # They sign in with what the admin typed (in a browser of their own).
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    theirs = await context.new_page()
    watch = PageWatch(theirs)
    await sign_in(theirs, Admin(admin.gateway, admin.tenant, email, PASSWORD, created["user_id"]))
    await expect(theirs.locator("header .who")).to_have_text(f"Acme ({admin.tenant}) · developer")
    await context.close()
    watch.check()

    await row.get_by_label(f"Role of {email}", exact=True).select_option(label="viewer")
    await row.get_by_role("button", name=f"Change the role of {email}").click()
    await expect(page.get_by_text(f"{email} is now viewer.")).to_be_visible()
    await expect(row.get_by_label(f"Role of {email}", exact=True)).to_have_value("viewer")
    assert (await _users(admin))[email]["role"] == "viewer"
    await screenshots(page, "users")

    await row.get_by_role("button", name=f"Deactivate {email}").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(f"Deactivate {email}?")
    await dialog.get_by_role("button", name="Deactivate").click()
    await expect(row).to_contain_text("deactivated")
    await expect(row.get_by_role("button", name=f"Deactivate {email}")).to_have_count(0)
    assert (await _users(admin))[email]["active"] is False
    status, refused = await http(
        "POST",
        f"{admin.gateway.url}/v1/auth/login",
        json={"tenant_id": admin.tenant, "email": email, "password": PASSWORD},
    )
    assert status == 401, refused


async def test_an_email_a_tenant_wrote_is_text_not_markup(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Users").click()
    alerts: list[str] = []
    page.on("dialog", lambda dialog: alerts.append(dialog.message))
    hostile = f"<script>alert(1)</script><img/src=x/onerror=alert(2)>@{unique('x')}.example.com"
    await _create(page, hostile, "user")
    await expect(page.get_by_role("row").filter(has_text=hostile)).to_be_visible()
    assert await page.locator("main script, main img").count() == 0
    assert alerts == []


async def test_the_form_shows_the_apis_refusal_with_its_code(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Users").click()
    page.watch.expect(409, r"/users$")  # type: ignore[attr-defined]
    await _create(page, admin.email, "user")
    await expect(page.get_by_role("form", name="New user").get_by_role("alert")).to_contain_text("CONFLICT: ")


async def test_a_viewer_sees_only_themselves_and_no_controls_and_the_api_refuses_them(page: Page, admin: Admin) -> None:
    user = await new_user(admin.gateway, admin.tenant, "viewer")
    await sign_in(page, Admin(admin.gateway, admin.tenant, user["email"], user["password"], user["user_id"]))
    await page.get_by_role("link", name="Users").click()
    await expect(page.get_by_role("row").filter(has_text=user["email"])).to_contain_text("viewer")
    await expect(page.get_by_role("row").filter(has_text=admin.email)).to_have_count(0)
    await expect(page.get_by_role("form", name="New user")).to_have_count(0)
    await expect(page.get_by_role("button", name="Create user")).to_have_count(0)
    await expect(page.get_by_role("button", name="Change role")).to_have_count(0)
    await expect(page.get_by_role("button", name="Deactivate")).to_have_count(0)
    await expect(page.get_by_role("combobox")).to_have_count(1)  # the language, nothing else
    await screenshots(page, "users-viewer")

    token = (await login(admin.gateway, admin.tenant, user))["access_token"]
    users = f"{admin.gateway.url}/v1/tenants/{admin.tenant}/users"
    for method, url, body in (
        ("POST", users, {"email": f"{unique('x')}@example.com", "password": PASSWORD, "role": "user"}),
        ("PATCH", f"{users}/{admin.user_id}", {"role": "viewer"}),
        ("POST", f"{users}/{admin.user_id}/deactivate", None),
    ):
        status, refused = await http(method, url, json=body, credential=token)
        assert (status, refused["error"]["code"]) == (403, "FORBIDDEN"), (method, url, refused)
