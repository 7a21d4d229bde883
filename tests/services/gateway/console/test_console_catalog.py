"""The console's catalog and usage pages, in Chromium: a try-it form generated from the input
schema calls a capability through the gate, a streaming one shows its progress, and the call
shows in the usage chart and its CSV."""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, datetime

import asyncpg
from nats.aio.client import Client as NATS
from PIL import Image
from playwright.async_api import Page, expect

from democratic_ai.contracts.registry_events import CapabilitySpec, ModuleManifest, ModuleRegistered, encode_event

from support.browser import screenshots
from support.client import http
from support.console import Admin, sign_in
from support.names import unique
from support.usage import by_call, settled, usage_events
from support.waiting import eventually


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_try_it_calls_a_capability_from_a_form_made_of_its_schema(
    page: Page, admin: Admin, example_modules: None
) -> None:
    await sign_in(page, admin)
    await page.get_by_role("link", name="Catalog").click()
    await page.get_by_label("Search").fill("analy")
    await page.get_by_role("button", name="text.analyze", exact=True).click()
    capability = page.locator('[data-capability="text.analyze"]')
    await expect(capability.get_by_role("cell", name="text", exact=True)).to_be_visible()  # the schema, as a table
    await capability.get_by_label("text *").fill("NATS is fast. JetStream adds persistence. Streams store messages.")
    await capability.get_by_role("button", name="Run").click()
    await expect(capability.get_by_role("status")).to_contain_text("Answered in")
    await expect(capability.get_by_label("Result")).to_contain_text('"word_count"')
    await screenshots(page, "catalog")


async def test_a_streaming_capability_shows_its_progress_to_the_end(
    page: Page, admin: Admin, example_modules: None, tmp_path
) -> None:
    picture = tmp_path / "small.png"
    picture.write_bytes(_png(24, 16))
    await sign_in(page, admin)
    await page.goto(f"{admin.gateway.url}/console/catalog?capability=image.upscale")
    capability = page.locator('[data-capability="image.upscale"]')
    await capability.get_by_label("image *").set_input_files(str(picture))
    await capability.get_by_label("scale").fill("3")
    await capability.get_by_role("button", name="Run").click()
    progress = capability.get_by_label("Progress")
    await expect(progress).to_have_attribute("value", "100")
    await expect(capability.get_by_role("status")).to_contain_text("Done in")
    upscaled = capability.get_by_role("img", name="image")
    await expect(upscaled).to_be_visible()
    source = await upscaled.get_attribute("src")
    assert source is not None and source.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).size == (72, 48)


async def test_the_usage_chart_shows_the_calls_and_downloads_as_csv(
    page: Page, admin: Admin, example_modules: None, nc: NATS, pool: asyncpg.Pool
) -> None:
    await sign_in(page, admin)
    await page.goto(f"{admin.gateway.url}/console/catalog?capability=text.analyze")
    capability = page.locator('[data-capability="text.analyze"]')
    for _ in range(2):
        await capability.get_by_label("text *").fill("One sentence. Another one.")
        await capability.get_by_role("button", name="Run").click()
        await expect(capability.get_by_role("status")).to_contain_text("Answered in")
    await eventually(
        lambda: _metered(admin, nc, pool, 2), "both calls to be metered and projected", timeout=15, interval=0.2
    )
    await page.get_by_role("link", name="Usage").click()
    chart = page.get_by_role("img", name="calls by hour")
    await expect(chart).to_be_visible()
    await expect(page.get_by_role("cell", name="success")).to_be_visible()
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download CSV").click()
    download = await download_info.value
    rows = list(csv.DictReader(io.StringIO((await download.path()).read_text())))
    assert sum(int(r["value"]) for r in rows if r["outcome"] == "success") == 2
    await screenshots(page, "usage")


async def _metered(admin: Admin, nc: NATS, pool: asyncpg.Pool, calls: int) -> bool:
    if len(by_call(await usage_events(nc, admin.tenant))) < calls:
        return False
    await settled(admin.gateway, nc, pool)
    return True


async def test_a_large_catalog_lists_each_capability_once_and_the_first_hundred_matches(
    page: Page, admin: Admin, nc: NATS
) -> None:
    """A platform holds many capabilities, some offered by several modules: the catalog shows
    one entry per capability, and no more than a hundred matches at once."""
    family = unique("many").replace("-", "")
    shared = f"{family}.shared"
    manifests = [
        ModuleManifest(module_id=f"{family}-{i}", capabilities=(CapabilitySpec(action=f"{family}.op{i:03d}"),))
        for i in range(120)
    ] + [ModuleManifest(module_id=f"{family}-s{i}", capabilities=(CapabilitySpec(action=shared),)) for i in range(3)]
    js = nc.jetstream()
    for manifest in manifests:
        event = ModuleRegistered(manifest=manifest, digest=manifest.digest(), at=datetime.now(UTC))
        await js.publish(f"registry.{manifest.module_id}.registered", encode_event(event))

    async def all_listed() -> bool:
        status, body = await http("GET", f"{admin.gateway.url}/v1/capabilities", credential=admin.gateway.api_key)
        return status == 200 and sum(c["action"].startswith(f"{family}.") for c in body["capabilities"]) == 123

    await eventually(all_listed, "the gateway to list the new modules' capabilities", timeout=10)
    await sign_in(page, admin)
    await page.get_by_role("link", name="Catalog").click()
    await page.get_by_label("Search").fill(f"{family}.")
    listing = page.locator("ul.capability-list")
    await expect(listing.get_by_text("21 more match: narrow the search to see them.")).to_be_visible()
    await expect(listing.get_by_role("button")).to_have_count(100)  # 121 capabilities, the first hundred
    await page.get_by_label("Search").fill(shared)
    await expect(listing.get_by_role("button", name=shared)).to_have_count(1)  # three modules, one entry
    await expect(listing.get_by_text("no live instance")).to_be_visible()
    await listing.get_by_role("button", name=shared).click()
    await expect(page.locator(f'[data-capability="{shared}"]')).to_contain_text("2 other module(s) offer it too.")
