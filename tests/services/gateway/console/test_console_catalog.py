"""The console's catalog and usage pages, in Chromium: a try-it form generated from the input
schema calls a capability through the gate, a streaming one shows its progress, and the call
shows in the usage chart and its CSV."""

from __future__ import annotations

import base64
import csv
import io

import asyncpg
from nats.aio.client import Client as NATS
from PIL import Image
from playwright.async_api import Page, expect

from support.browser import screenshots
from support.console import Admin, sign_in
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
