"""Fixtures of the console's browser tests: one Chromium per test process, a signed-in page."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from playwright.async_api import Browser, Page, async_playwright

from democratic_ai.hub import Hub
from democratic_ai.sdk.examples import ImageTools, TextTools

from support.browser import CHROMIUM, LAUNCH_ARGS, PageWatch
from support.console import Admin
from support.gateway import Gateway
from support.identity import new_tenant, new_user
from support.modules import registered


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        reason = (
            "the console's browser tests need Chromium: apt-get install chromium (Debian), or set"
            " DAI_CHROMIUM to a Chromium or Chrome binary"
        )
        if os.environ.get("CI"):  # .ci/run installs it: a CI run without it must not pass quietly
            pytest.fail(reason)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def admin(gateway: Gateway) -> Admin:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "tenant_admin")
    return Admin(gateway, tenant, user["email"], user["password"], user["user_id"])


@pytest.fixture
async def page(browser: Browser, gateway: Gateway) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) and its page, watched for faults (checked at the end).

    It closes before the gateway stops (it depends on it): a live page's open streams end as the
    page goes, not refused by a gateway that went first."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    page = await context.new_page()
    page.set_default_timeout(10_000)
    watch = PageWatch(page)
    page.watch = watch  # type: ignore[attr-defined]
    yield page
    await context.close()
    watch.check()


@pytest.fixture
async def example_modules(nc: NATS, hub: Hub) -> AsyncIterator[None]:
    """The example modules: text tools (text.summarize …) and image tools (image.upscale, streaming)."""
    modules = [TextTools(), ImageTools()]
    for module in modules:
        await module.start(nc)
        await registered(hub, module)
    yield
    for module in modules:
        await module.stop()
