"""The console's sign-in and session, in Chromium: a cookie no script reads, renewed on reload,
revoked at sign-out; the session routes refuse what another site could send."""

from __future__ import annotations

import aiohttp
from playwright.async_api import Page, expect

from democratic_ai.services.gateway.console_routes import CONTENT_SECURITY_POLICY, SESSION_COOKIE

from support.browser import screenshots
from support.console import Admin, sign_in
from support.gateway import Gateway


async def test_the_front_door_leads_to_the_console_with_a_strict_policy(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (302, "/console")
        for path in ("/console", "/console/usage", "/console/static/app.js"):
            async with http.get(gateway.url + path) as response:
                assert response.status == 200, path
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert response.headers["X-Frame-Options"] == "DENY"
        async with http.get(f"{gateway.url}/console/static/../app.py") as response:
            assert response.status == 404
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY


async def test_sign_in_holds_the_session_in_an_http_only_strict_cookie(page: Page, admin: Admin) -> None:
    await page.goto(f"{admin.gateway.url}/console")
    await screenshots(page, "signin")
    await sign_in(page, admin)
    [cookie] = await page.context.cookies()
    assert cookie["name"] == SESSION_COOKIE
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console/session"
    assert await page.evaluate("document.cookie") == ""  # no script reads it
    stored = await page.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
    assert "dai_" not in stored and "eyJ" not in stored  # no key, no token kept by the page
    await page.reload()  # the session survives a reload: the cookie is traded for a new token
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    [renewed] = await page.context.cookies()
    assert renewed["value"] != cookie["value"]  # the refresh token was spent and replaced


async def test_sign_out_revokes_the_session(page: Page, admin: Admin) -> None:
    await sign_in(page, admin)
    [cookie] = await page.context.cookies()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert await page.context.cookies() == []
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{admin.gateway.url}/v1/auth/refresh", json={"refresh_token": cookie["value"]}) as response,
    ):
        assert response.status == 401  # the session's refresh token no longer works anywhere


async def test_a_wrong_password_is_told_on_the_form(page: Page, admin: Admin) -> None:
    page.watch.expect(401, r"/console/session$")  # type: ignore[attr-defined]
    await page.goto(f"{admin.gateway.url}/console")
    await page.get_by_label("Organisation (tenant)").fill(admin.tenant)
    await page.get_by_label("E-mail").fill(admin.email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("invalid e-mail, password or tenant")


async def test_session_routes_refuse_what_another_site_could_send(admin: Admin) -> None:
    url = f"{admin.gateway.url}/console/session"
    body = {"tenant_id": admin.tenant, "email": admin.email, "password": admin.password}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: an IP host
        async with http.post(url, json=body) as response:  # a form or script of another site: no header
            assert response.status == 403
            assert (await response.json())["error"]["details"] == {"header": "X-Dai-Console"}
        headers = {"X-Dai-Console": "1", "Origin": "http://evil.example"}
        async with http.post(url, json=body, headers=headers) as response:
            assert response.status == 403
        async with http.post(url, json=body, headers={"X-Dai-Console": "1"}) as response:
            assert response.status == 200
            assert "HttpOnly" in response.headers["Set-Cookie"] and "SameSite=Strict" in response.headers["Set-Cookie"]
        async with http.post(f"{url}/refresh", headers={"X-Dai-Console": "1"}) as response:
            assert response.status == 200  # the cookie jar holds the session now
        http.cookie_jar.clear()
        async with http.post(f"{url}/refresh", headers={"X-Dai-Console": "1"}) as response:
            assert response.status == 204  # no session: nothing to renew, not an error
