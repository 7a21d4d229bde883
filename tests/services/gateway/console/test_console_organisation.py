"""The console's Organisation page, in Chromium: the tenant renamed (the header follows without a
reload, the API answers the new name); a toolset defined, followed by a key issued on the API keys
page, its delete refused with that key named, redefined (the key follows); a toolset nobody follows
deleted; what a tenant writes is text; a viewer sees it all read-only, and the API refuses them."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.identity import login, new_user
from support.names import unique

HOSTILE = '<script>window.hacked = 1</script><img src=x onerror="window.hacked = 2"> & Co'
SUMMARY = {"text": "NATS is fast. JetStream adds persistence. Streams store messages.", "max_length": 30}


async def _token(admin: Admin) -> str:
    return (await login(admin.gateway, admin.tenant, {"email": admin.email, "password": admin.password}))[
        "access_token"
    ]


async def _toolsets(admin: Admin) -> dict[str, list[str]]:
    status, body = await http(
        "GET", f"{admin.gateway.url}/v1/tenants/{admin.tenant}/toolsets", credential=await _token(admin)
    )
    assert status == 200, body
    return {toolset["name"]: toolset["capabilities"] for toolset in body["toolsets"]}


async def _define(page: Page, name: str, capabilities: str) -> None:
    form = page.get_by_role("form", name="Define a toolset")
    await form.get_by_label("Toolset name").fill(name)
    await form.get_by_label("Capabilities").fill(capabilities)
    await form.get_by_role("button", name="Save toolset").click()


async def _delete(page: Page, name: str) -> None:
    await page.get_by_role("button", name=f"Delete toolset {name}", exact=True).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(f"Delete toolset {name}?")
    await dialog.get_by_role("button", name="Delete").click()


async def test_renaming_the_organisation_changes_the_header_at_once(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("navigation").get_by_role("link", name="Organisation").click()
    details = page.get_by_role("region", name="Your organisation")
    await expect(details).to_contain_text(admin.tenant)
    await expect(details).to_contain_text("active")
    form = details.get_by_role("form", name="Rename the organisation")
    await expect(form.get_by_label("Name")).to_have_value("Acme")

    page.watch.expect(422, rf"/v1/tenants/{admin.tenant}$")  # type: ignore[attr-defined]
    await form.get_by_label("Name").fill("   ")
    await form.get_by_role("button", name="Rename").click()
    await expect(form.get_by_role("alert")).to_contain_text("VALIDATION_FAILED: name must not be empty (name)")
    await expect(form.get_by_label("Name")).to_have_value("   ")  # what was typed stays
    await expect(page.locator("header .who")).to_have_text(f"Acme ({admin.tenant}) · tenant admin")

    await form.get_by_label("Name").fill("Acme Corporation")
    await form.get_by_role("button", name="Rename").click()
    await expect(page.locator("header .who")).to_have_text(f"Acme Corporation ({admin.tenant}) · tenant admin")
    await expect(page.get_by_text("The organisation is now called Acme Corporation.")).to_be_visible()
    await expect(details.get_by_role("definition").filter(has_text="Acme Corporation")).to_have_count(1)
    status, tenant = await http("GET", f"{admin.gateway.url}/v1/tenants/{admin.tenant}", credential=await _token(admin))
    assert (status, tenant["name"], tenant["suspended"]) == (200, "Acme Corporation", False), tenant
    await page.reload()  # and it stays so: the header reads it from the API again
    await expect(page.locator("header .who")).to_have_text(f"Acme Corporation ({admin.tenant}) · tenant admin")


async def test_a_toolset_defined_followed_refused_deletion_redefined_and_one_deleted(
    page: Page, admin: Admin, example_modules: None
) -> None:
    toolset, spare = unique("analysts"), unique("spare")
    await sign_in(page, admin)
    await page.get_by_role("link", name="Organisation").click()
    await expect(page.get_by_text("No toolset yet.")).to_be_visible()

    # A bad entry: the API's refusal, and the form keeps what was typed.
    page.watch.expect(422, rf"/toolsets/{toolset}$")  # type: ignore[attr-defined]
    await _define(page, toolset, "text.analyze, Not A Capability!")
    form = page.get_by_role("form", name="Define a toolset")
    await expect(form.get_by_role("alert")).to_contain_text("VALIDATION_FAILED: ")
    await expect(form.get_by_role("alert")).to_contain_text("(capabilities)")
    await expect(form.get_by_label("Capabilities")).to_have_value("text.analyze, Not A Capability!")
    await expect(form.get_by_label("Toolset name")).to_have_value(toolset)

    await form.get_by_label("Capabilities").fill("text.analyze")
    await form.get_by_role("button", name="Save toolset").click()
    row = page.get_by_role("row").filter(has_text=toolset)
    await expect(row).to_contain_text("text.analyze")
    await expect(row).to_contain_text("no live key")
    await expect(form.get_by_label("Toolset name")).to_have_value("")
    await _define(page, spare, "image.*")
    await expect(page.get_by_role("row").filter(has_text=spare)).to_contain_text("image.*")
    assert await _toolsets(admin) == {toolset: ["text.analyze"], spare: ["image.*"]}

    # A key issued on the API keys page follows the toolset: it may not summarize.
    await page.get_by_role("link", name="API keys").click()
    keys = page.get_by_role("form", name="New API key")
    await keys.get_by_label("Name", exact=True).fill("reporting bot")
    await keys.get_by_label("Toolset").select_option(label=f"Toolset {toolset}: text.analyze")
    await keys.get_by_role("button", name="Create key").click()
    box = page.get_by_role("region", name="New key's secret")
    secret = (await box.get_by_label("Secret").inner_text()).strip()
    prefix = secret[:16]
    summarize = f"{admin.gateway.url}/v1/capabilities/text.summarize/invoke"
    status, refused = await http("POST", summarize, json=SUMMARY, credential=secret)
    assert (status, refused["error"]["code"]) == (403, "FORBIDDEN"), refused

    # Its toolset is not deleted while it follows it: the refusal names the key.
    await page.get_by_role("link", name="Organisation").click()
    await expect(row).to_contain_text(f"reporting bot {prefix}")
    page.watch.expect(409, rf"/toolsets/{toolset}$")  # type: ignore[attr-defined]
    await _delete(page, toolset)
    refusal = page.get_by_role("region", name="Toolsets").get_by_role("alert")
    await expect(refusal).to_contain_text("CONFLICT: ")
    await expect(refusal).to_contain_text(f"Toolset {toolset} was not deleted")
    followers = refusal.get_by_role("list", name=f"Live keys that follow {toolset}")
    await expect(followers.get_by_role("listitem")).to_have_text([f"reporting bot {prefix}"])
    await expect(row).to_be_visible()
    assert toolset in await _toolsets(admin)
    await screenshots(page, "organisation")

    # Redefined instead, from the row: the key follows at its next call.
    await row.get_by_role("button", name=f"Edit toolset {toolset}").click()
    await expect(form.get_by_label("Toolset name")).to_have_value(toolset)
    await expect(form.get_by_label("Capabilities")).to_have_value("text.analyze")
    await expect(form.get_by_label("Capabilities")).to_be_focused()
    await form.get_by_label("Capabilities").fill("text.*")
    await form.get_by_role("button", name="Save toolset").click()
    await expect(row).to_contain_text("text.*")
    await expect(row).not_to_contain_text("text.analyze")
    await expect(refusal).to_be_hidden()  # the refusal was about the toolset as it was
    assert (await _toolsets(admin))[toolset] == ["text.*"]
    status, answered = await http("POST", summarize, json=SUMMARY, credential=secret)
    assert status == 200, answered

    # The one nobody follows is deleted.
    await _delete(page, spare)
    await expect(page.get_by_text(f"Toolset {spare} deleted.")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text=spare)).to_have_count(0)
    assert await _toolsets(admin) == {toolset: ["text.*"]}


async def test_what_a_tenant_writes_is_text_not_markup(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Organisation").click()
    form = page.get_by_role("form", name="Rename the organisation")
    await form.get_by_label("Name").fill(HOSTILE)
    await form.get_by_role("button", name="Rename").click()
    await expect(page.locator("header .who")).to_have_text(f"{HOSTILE} ({admin.tenant}) · tenant admin")
    await expect(page.get_by_role("region", name="Your organisation")).to_contain_text(HOSTILE)
    # A toolset name is a subject token, so markup is refused — and the refusal quoting it is text.
    page.watch.expect(422, r"/toolsets/")  # type: ignore[attr-defined]
    await _define(page, "<img src=x onerror=window.hacked=3>", "text.*")
    alert = page.get_by_role("form", name="Define a toolset").get_by_role("alert")
    await expect(alert).to_contain_text("<img src=x onerror=window.hacked=3>")
    await page.reload()
    await expect(page.locator("header .who")).to_contain_text(HOSTILE)
    assert await page.locator("header script, header img, main script, main img").count() == 0
    assert await page.evaluate("window.hacked") is None


async def test_a_viewer_sees_it_all_read_only_and_the_api_refuses_them(page: Page, admin: Admin) -> None:
    token = await _token(admin)
    status, body = await http(
        "PUT",
        f"{admin.gateway.url}/v1/tenants/{admin.tenant}/toolsets/summaries",
        json={"capabilities": ["text.summarize", "text.*"]},
        credential=token,
    )
    assert status == 200, body
    user = await new_user(admin.gateway, admin.tenant, "viewer")
    await sign_in(page, Admin(admin.gateway, admin.tenant, user["email"], user["password"], user["user_id"]))
    await page.get_by_role("link", name="Organisation").click()
    await expect(page.get_by_text("Only an administrator can change them.")).to_be_visible()
    details = page.get_by_role("region", name="Your organisation")
    await expect(details.get_by_role("definition")).to_have_text([admin.tenant, "Acme", re.compile(r"\d"), "active"])
    await expect(details).to_have_text(re.compile(r"Stateactive$"))  # the facts, and nothing under them
    row = page.get_by_role("row").filter(has_text="summaries")
    await expect(row).to_contain_text("text.summarize")
    await expect(row).to_contain_text("text.*")
    await expect(page.get_by_role("columnheader", name="Actions")).to_have_count(0)
    await expect(page.get_by_role("columnheader", name="Followed by")).to_have_count(0)  # no key:read
    await expect(page.get_by_role("form")).to_have_count(0)
    await expect(page.get_by_role("textbox")).to_have_count(0)
    await expect(page.get_by_role("button")).to_have_text(["Sign out"])
    await expect(page.get_by_role("combobox")).to_have_count(1)  # the language, nothing else
    await screenshots(page, "organisation-viewer")

    viewer = (await login(admin.gateway, admin.tenant, user))["access_token"]
    tenant = f"{admin.gateway.url}/v1/tenants/{admin.tenant}"
    for method, url, sent in (
        ("PATCH", tenant, {"name": "Taken over"}),
        ("PUT", f"{tenant}/toolsets/summaries", {"capabilities": ["image.*"]}),
        ("PUT", f"{tenant}/toolsets/{unique('mine')}", {"capabilities": ["image.*"]}),
        ("DELETE", f"{tenant}/toolsets/summaries", None),
    ):
        status, refused = await http(method, url, json=sent, credential=viewer)
        assert (status, refused["error"]["code"]) == (403, "FORBIDDEN"), (method, url, refused)
    status, unchanged = await http("GET", tenant, credential=viewer)
    assert (status, unchanged["name"]) == (200, "Acme"), unchanged
    assert await _toolsets(admin) == {"summaries": ["text.*", "text.summarize"]}
