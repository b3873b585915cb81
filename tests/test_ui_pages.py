"""The UI's pages in a real headless chromium: models (load progress, GPUs, the scheduler's queue),
logs, the playground (a chat streamed token by token, Stop, an error envelope, embeddings) and
activity (the timeline of swaps and loads; the request history's table and charts).

Each test watches the page for script errors, console errors (Content-Security-Policy violations
among them) and requests to any other origin: the UI loads nothing from the network. ``SWAPPROXY_UI_SCREENSHOTS=DIR`` saves a
screenshot of each page into DIR (``support.screenshot``).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fake_gpus import FakeGpus
from support import Proxy, fake_cmd, make_config, open_gated_stream, release_all, screenshot, wait_until
from swapproxy.web.management import UI_CSP

playwright_api = pytest.importorskip("playwright.async_api") if not os.environ.get(
    "SWAPPROXY_REQUIRE_BROWSER") else __import__("playwright.async_api", fromlist=["expect"])
expect = playwright_api.expect
STEP_MS = 15_000
GiB = 1 << 30


def watch(page: Any, proxy: Proxy) -> list[str]:
    """What went wrong on the page: script errors, errors the console shows (a CSP violation, an
    SVG attribute the chart got wrong; not an HTTP error status, which the pages show themselves),
    requests leaving the origin."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.on("request", lambda req: problems.append(f"request to another origin: {req.url}")
            if not req.url.startswith(proxy.url + "/") else None)
    return problems


async def open_ui(page: Any, proxy: Proxy, route: str = "") -> list[str]:
    problems = watch(page, proxy)
    resp = await page.goto(proxy.url + "/ui" + route)
    assert resp.headers["content-security-policy"] == UI_CSP
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    return problems


async def release(proxy: Proxy, model: str, n: int) -> None:
    """Let ``n`` more events of the gated streams on ``model``'s fake go."""
    port = proxy.swapper.slot(model).process.spec.port
    async with proxy.http.post(f"http://127.0.0.1:{port}/debug/release?n={n}") as resp:
        assert resp.status == 200


async def test_models_page_shows_load_progress_gpus_and_the_queue(proxy_factory: Any, page: Any,
                                                                  tmp_path: Path) -> None:
    gpus = FakeGpus(24 * GiB, 16 * GiB, every_process={"gpu0": 3 * GiB})
    gpus.device_used = [5 * GiB, 1 * GiB]
    gpus.readings = {"utilization": 40.0, "temperature": 61.0, "power": 120.0, "power_limit": 300.0}
    proxy = await proxy_factory(make_config({
        "chat": {"cmd": fake_cmd("--model-name", "chat", "--startup-delay", "1")},
        "embed": {"cmd": fake_cmd("--model-name", "embed")},
    }, stateDir=str(tmp_path),  # its own learned start times: the first start is a first start
        memory={"devices": {"gpu0": "20GiB"}},
        routing={"scheduler": {"settings": {"fifo": {"maxWait": 0.3}}}}), gpus=gpus)
    problems = await open_ui(page, proxy)
    chat = page.locator('tr[data-model="chat"]')
    bar = page.get_by_role("progressbar", name="chat load progress")

    # each GPU: its memory in use of its total, what it reports, its budget
    gpu0 = page.get_by_role("article", name="gpu0")
    await expect(gpu0).to_contain_text("Fake GPU", timeout=STEP_MS)
    await expect(gpu0).to_contain_text("5.0 GiB of 24.0 GiB used · 40% busy · 61 °C · 120 / 300 W")
    await expect(gpu0).to_contain_text("budget 20.0 GiB · planned 0 B")
    await expect(gpu0.get_by_role("meter", name="gpu0 memory used")).to_have_attribute("value", str(5 * GiB))
    await expect(page.get_by_role("article", name="gpu1")).to_contain_text("1.0 GiB of 16.0 GiB used")

    # a first start: a bar without a value (there is no estimate to base one on), and it says so
    await chat.locator("button.load").click()
    await expect(bar).to_be_visible(timeout=STEP_MS)
    await expect(chat.locator(".progress-text")).to_contain_text("first start: no estimate yet")
    assert await bar.get_attribute("value") is None
    await screenshot(page, "models-first-start")
    await expect(chat.locator(".state")).to_have_text("running", timeout=STEP_MS)
    await expect(bar).to_have_count(0)
    # what its processes hold on the GPU, in its row and on the GPU's card
    await expect(chat.locator(".gpu-held")).to_have_text("gpu0 3.0 GiB", timeout=STEP_MS)
    await expect(gpu0.get_by_role("list", name="models on gpu0")).to_have_text("chat 3.0 GiB")

    # the next start has the last one's time: a value, and the time left
    await chat.locator("button.unload").click()
    await expect(chat.locator(".state")).to_have_text("stopped", timeout=STEP_MS)
    await chat.locator("button.load").click()
    await expect(chat.locator(".progress-text")).to_contain_text(re.compile(r"\d+% · about \d+s left"),
                                                                 timeout=STEP_MS)
    assert 0 <= float(await bar.get_attribute("value") or "-1") < 1
    await screenshot(page, "models-loading")
    await expect(chat.locator(".state")).to_have_text("running", timeout=STEP_MS)

    # the queue: a request for embed waits while chat serves one (one model at a time), and past
    # maxWait the swap drains chat's request first
    await expect(page.locator("#no-queue")).to_be_visible()
    stream = await open_gated_stream(proxy, "chat")
    waiting = asyncio.ensure_future(proxy.chat("embed"))
    try:
        queued = page.locator('#queue tr[data-queued="embed"]')
        await expect(queued.locator("td").nth(1)).to_have_text("1", timeout=STEP_MS)
        await expect(queued.locator(".swap")).to_have_text("draining chat (their requests finish first)",
                                                           timeout=STEP_MS)
        await expect(page.locator("#queue-depth")).to_have_text("· 1 request(s) waiting")
        await screenshot(page, "models-queue")
        await release_all(proxy, "chat", stream)
        assert (await waiting)[0] == 200
    finally:
        stream.close()
        waiting.cancel()
    await expect(queued).to_have_count(0, timeout=STEP_MS)
    await expect(page.locator("#no-queue")).to_be_visible()
    await expect(page.locator('tr[data-model="embed"] .state')).to_have_text("running")
    assert problems == []


async def test_playground_streams_a_chat_stops_it_shows_errors_and_embeds_and_logs_follow(
        proxy_factory: Any, page: Any) -> None:
    proxy = await proxy_factory(make_config({
        "chat": {"cmd": fake_cmd("--model-name", "chat", "--tokens", "4")},
        "embed": {"cmd": fake_cmd("--model-name", "embed", "--embedding-dim", "16")},
        "tiny": {"cmd": fake_cmd("--model-name", "tiny", "--ctx-size", "3")},
    }, groups={"all": {"members": ["chat", "embed", "tiny"], "swap": False}}))
    problems = await open_ui(page, proxy, "#/playground")
    await expect(page.get_by_role("link", name="Playground")).to_have_attribute("aria-current", "page")
    model = page.locator("#page-playground").get_by_label("Model", exact=True)
    await expect(model.locator("option")).to_have_text(["chat", "embed", "tiny"], timeout=STEP_MS)
    await model.select_option("chat")
    await page.get_by_text("Settings").click()
    await page.get_by_label("Extra body (JSON)").fill('{"x_gate": true}')  # the fake sends one token per release
    message = page.get_by_label("Message")
    answer = page.locator(".msg-assistant .msg-content").last

    # streamed: each token shows as it arrives (the fake sends the next only when released)
    await message.fill("hello")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(answer).to_have_text("tok0", timeout=STEP_MS)
    await expect(page.get_by_role("button", name="Stop", exact=True)).to_be_enabled()
    await expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    await release(proxy, "chat", 1)
    await expect(answer).to_have_text("tok0 tok1", timeout=STEP_MS)
    await release(proxy, "chat", 1)
    await expect(answer).to_have_text("tok0 tok1 tok2", timeout=STEP_MS)
    await release(proxy, "chat", 4)  # the last token, the timings, the usage, [DONE] (credits would last)
    await expect(answer).to_have_text("tok0 tok1 tok2 tok3", timeout=STEP_MS)
    meta = page.locator(".msg-assistant .msg-meta").last
    await expect(meta).to_contain_text(re.compile(r"4 tokens · [\d.]+ tokens/s · first token after"))
    await expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    await screenshot(page, "playground-chat")

    # Stop cuts the stream: the request ends at the proxy, the answer says it was stopped
    await message.fill("and again")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(answer).to_have_text("tok0", timeout=STEP_MS)
    await wait_until(lambda: len(proxy.runtime.inflight.list()) == 1, 10, "the request in flight")
    await page.get_by_role("button", name="Stop", exact=True).click()
    await expect(meta).to_contain_text("stopped ·")
    await wait_until(lambda: proxy.runtime.inflight.list() == [], 10, "the request to be cut")
    # the conversation kept the answered turn and the part of the stopped one that came
    await expect(page.locator(".msg")).to_have_count(4)

    # an error is the upstream's envelope: status, type and message
    await page.get_by_label("Extra body (JSON)").fill("")
    await model.select_option("tiny")
    await page.get_by_role("button", name="Clear conversation").click()
    await message.fill("one two three four five")
    await page.get_by_role("button", name="Send", exact=True).click()
    alert = page.locator("#pg-error")
    await expect(alert).to_contain_text("400 exceed_context_size_error: request (5 tokens) exceeds the available "
                                        "context size (3 tokens)", timeout=STEP_MS)
    await expect(page.locator(".msg-assistant")).to_have_count(0)

    # embeddings: the vector's length and its first values
    await page.get_by_role("tab", name="Embeddings").click()
    await model.select_option("embed")
    await page.get_by_role("button", name="Embed", exact=True).click()
    result = page.locator("#pg-embed-result")
    await expect(result.locator(".dims")).to_have_text("16 dimensions", timeout=STEP_MS)
    vector = await result.locator("code.vector").inner_text()
    assert re.fullmatch(r"\[(-?\d\.\d{4}, ){8}…\]", vector), vector  # the first 8 of 16
    await screenshot(page, "playground-embeddings")

    # the logs page follows the models' output live, and filters it
    await page.get_by_role("link", name="Logs").click()
    await page.get_by_role("tab", name="chat", exact=True).click()
    view = page.get_by_label("log lines")
    served = view.locator("span", has_text="POST /v1/chat/completions 200")
    await expect(served.first).to_be_visible(timeout=STEP_MS)
    before = await served.count()
    assert (await proxy.chat("chat"))[0] == 200
    await expect(served).to_have_count(before + 1, timeout=STEP_MS)
    await page.get_by_label("filter").fill("model loaded")
    await expect(view.locator("span")).to_have_count(1)
    await page.get_by_label("filter").fill("")
    await page.get_by_role("tab", name="all", exact=True).click()
    await expect(view).to_contain_text("[embed]")
    await screenshot(page, "logs")
    assert problems == []


async def test_activity_page_draws_the_timeline_of_swaps_and_loads(proxy_factory: Any, page: Any) -> None:
    proxy = await proxy_factory(make_config({
        "chat": {"cmd": fake_cmd("--model-name", "chat")},
        "embed": {"cmd": fake_cmd("--model-name", "embed")},
        "broken": {"cmd": fake_cmd("--model-name", "broken", "--exit-during-startup", "2")},
    }))
    for name in ("chat", "embed", "chat"):  # two swaps
        assert (await proxy.chat(name))[0] == 200
    problems = await open_ui(page, proxy, "#/activity")
    lanes = page.locator("#chart-timeline g.lane")
    await expect(lanes).to_have_count(2, timeout=STEP_MS)  # only models that were loaded or stopped
    chat = page.locator('#chart-timeline g.lane[data-lane="chat"]')
    await expect(chat.locator("rect.span-ready")).to_have_count(2)
    await expect(chat.locator("path.mark")).to_have_count(1)  # stopped once, for embed
    assert "swap to embed" in await chat.locator("path.mark title").text_content()
    await expect(page.locator("#timeline-note")).to_contain_text("2 swap(s) since")

    # live: a failed start and a swap appear without a reload of the page
    assert (await proxy.chat("broken"))[0] == 503
    await expect(lanes).to_have_count(3, timeout=STEP_MS)
    await expect(page.locator('#chart-timeline g.lane[data-lane="broken"] rect.span-failed')).to_have_count(1)
    await expect(chat.locator("path.mark")).to_have_count(2)
    assert "failed after" in await page.locator('g.lane[data-lane="broken"] rect title').text_content()

    # the request history: a row per request, newest first, with the fake's tokens and speed and the wait
    rows = page.locator("#activity tbody tr")
    await expect(rows).to_have_count(4, timeout=STEP_MS)
    await expect(rows.first).to_contain_text("broken")
    await expect(rows.first.locator("td.status")).to_have_text("503")
    await expect(rows.nth(1).locator("td.model-id")).to_have_text("chat")
    await expect(rows.nth(1).locator("td.status")).to_have_text("200")
    await expect(rows.nth(1).locator("td.gen-speed")).to_have_text(re.compile(r"^[\d,.]+$"))
    await expect(rows.nth(1)).to_contain_text("swap")  # chat came back by a swap from embed
    await expect(page.locator("#activity-stats")).not_to_be_empty()
    # a row's capture: what went to the model, pretty-printed, and what came back
    await rows.nth(1).get_by_role("button", name="capture").click()
    dialog = page.locator("#capture-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("region", name="Request body")).to_contain_text('"model": "chat"')
    await expect(dialog.get_by_role("region", name="Response body")).to_contain_text("chat.completion")
    await screenshot(page, "activity-capture")
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_be_hidden()
    await screenshot(page, "activity")
    assert problems == []


async def test_playground_takes_an_inference_key_where_the_pages_key_opens_management_only(
        proxy_factory: Any, page: Any) -> None:
    proxy = await proxy_factory(make_config({"chat": {"cmd": fake_cmd("--model-name", "chat", "--tokens", "3")}},
                                            managementApiKeys=["mk-ui"], inferenceApiKeys=["ik-chat"]))
    # as a browser does once it has asked for the key at /ui: Basic credentials with every call
    context = await page.context.browser.new_context(
        http_credentials={"username": "me", "password": "mk-ui", "send": "always"})
    try:
        page = await context.new_page()
        refused: list[str] = []  # a 401 would make a browser forget its credentials for the whole UI
        page.on("response", lambda resp: refused.append(resp.url) if resp.status == 401 else None)
        problems = await open_ui(page, proxy, "#/playground")  # the event stream is open: management works
        alert = page.locator("#pg-error")
        await expect(alert).to_have_text("This page's key opens the management routes only: give an inference "
                                         "API key in Settings.", timeout=STEP_MS)
        await expect(page.get_by_label("API key")).to_be_visible()  # Settings opened
        await page.get_by_label("Message").fill("hello")
        await page.get_by_role("button", name="Send", exact=True).click()  # not sent without a key
        await expect(page.locator(".msg")).to_have_count(0)
        await page.get_by_label("API key").fill("ik-chat")
        await page.get_by_label("API key").press("Tab")  # changed: the list is read again, with the key
        await expect(alert).to_be_hidden(timeout=STEP_MS)
        await page.get_by_role("button", name="Send", exact=True).click()
        await expect(page.locator(".msg-assistant .msg-content")).to_have_text("tok0 tok1 tok2", timeout=STEP_MS)
        await page.get_by_role("link", name="Models").click()  # the page's own credentials still work
        await page.locator('tr[data-model="chat"] button.unload').click()
        await expect(page.locator('tr[data-model="chat"] .state')).to_have_text("stopped", timeout=STEP_MS)
        await expect(page.locator("#conn")).to_have_text("live")
        assert problems == [] and refused == []
    finally:
        await context.close()
