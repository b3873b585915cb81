"""The /ui page in a real headless browser (Debian's chromium, driven by Playwright).

The browser comes from the system (``apt-get install chromium``; scripts/test.sh
does it when it can): Playwright never downloads one here. Without a browser
the test is skipped — unless ``SWAPPROXY_REQUIRE_BROWSER=1`` (set by
scripts/test.sh once it has installed one), where a missing browser fails.

``SWAPPROXY_UI_SCREENSHOTS=DIR`` saves screenshots of the pages into DIR for a person to
look at (support.screenshot; the pages' own tests, test_ui_pages.py, save one of each page).
"""

from __future__ import annotations

import os

import pytest

from support import fake_cmd, free_port_block, make_config, open_gated_stream, pid_gone, screenshot, wait_until

# Without playwright the tests skip (the page fixture says why), unless a browser is required.
playwright_api = pytest.importorskip("playwright.async_api") if not os.environ.get(
    "SWAPPROXY_REQUIRE_BROWSER") else __import__("playwright.async_api", fromlist=["expect"])
expect = playwright_api.expect
STEP_MS = 15_000


async def test_ui_lists_models_loads_unloads_and_shows_logs(proxy_factory, page) -> None:
    config = make_config({
        "chat": {"cmd": fake_cmd("--model-name", "chat", "--startup-delay", "1"), "name": "Chat model", "ttl": 300},
        "embed": {"cmd": fake_cmd("--model-name", "embed"), "aliases": ["text-embedding"]},
        "broken": {"cmd": fake_cmd("--model-name", "broken", "--exit-during-startup", "2")},
    }, groups={  # broken runs beside the others: its failure does not stop chat
        "main": {"members": ["chat", "embed"], "swap": True, "exclusive": False},
        "side": {"members": ["broken"], "swap": True, "exclusive": False},
    })
    proxy = await proxy_factory(config)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(proxy.url + "/")  # redirects to /ui
    assert page.url.endswith("/ui")
    rows = page.locator("#models tbody tr[data-model]")
    await expect(rows).to_have_count(3, timeout=STEP_MS)
    assert await rows.evaluate_all("rs => rs.map(r => r.dataset.model)") == ["chat", "embed", "broken"]
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    chat = page.locator('tr[data-model="chat"]')
    await expect(chat.locator(".state")).to_have_text("stopped")
    await page.evaluate("window.__noReload = 1")  # gone if the page reloads

    # load: "starting…" with its time against the health-check timeout, then running by itself
    await chat.locator("button.load").click()
    await expect(chat.locator(".state")).to_have_text("starting…", timeout=STEP_MS)
    await expect(chat.locator(".since")).to_contain_text("/ 15s")
    await expect(chat.locator("button.load")).to_be_disabled()
    await expect(chat.locator(".state")).to_have_text("running", timeout=STEP_MS)
    await wait_until(lambda: proxy.pid("chat") is not None)
    await expect(chat.locator(".pid")).to_have_text(str(proxy.pid("chat")))
    assert proxy.swapper.running() == ["chat"]

    # its Logs button opens the logs page on the model's output
    await chat.locator('button[data-action="logs"]').click()
    assert page.url.endswith("/ui#/logs/chat")
    await expect(page.get_by_role("link", name="Logs")).to_have_attribute("aria-current", "page")
    await expect(page.locator('.tab[data-source="chat"]')).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#log-view")).to_contain_text("fake-llama: model loaded", timeout=STEP_MS)
    await expect(page.locator("#log-view")).to_contain_text("starting → ready")

    # a request through the proxy: its output line appears live, the in-flight count goes back to 0
    status, _ = await proxy.chat("chat")
    assert status == 200
    await expect(page.locator("#log-view")).to_contain_text("POST /v1/chat/completions 200", timeout=STEP_MS)
    await page.get_by_role("link", name="Models").click()
    await expect(chat.locator(".inflight")).to_have_text("0")

    # a failed start is obvious: red state, the reason and the model's last output
    broken = page.locator('tr[data-model="broken"]')
    await broken.locator("button.load").click()
    await expect(broken.locator(".state")).to_have_text("failed", timeout=STEP_MS)
    error = page.locator('tr.error-row[data-error-for="broken"]')
    await expect(error).to_contain_text("exited with code 2")
    await expect(error).to_contain_text("failed to load model")
    await expect(page.locator("#summary")).to_have_text("1 running · 1 failed")
    await expect(broken.locator(".inflight")).to_have_text("0")

    await screenshot(page, "models-running-and-failed")

    # unload: stopped, pid gone, process gone
    await chat.locator("button.unload").click()
    await expect(chat.locator(".state")).to_have_text("stopped", timeout=STEP_MS)
    await expect(chat.locator(".pid")).to_have_text("–")
    assert proxy.swapper.running() == []
    await broken.locator("button.unload").click()  # "Clear" the failure
    await expect(broken.locator(".state")).to_have_text("stopped", timeout=STEP_MS)
    await expect(page.locator('tr.error-row[data-error-for="broken"]')).to_have_count(0)

    assert await page.evaluate("window.__noReload") == 1
    assert errors == []


async def test_ui_stop_now_cuts_the_requests_in_flight(proxy_factory, page) -> None:  # type: ignore[no-untyped-def]
    proxy = await proxy_factory(make_config({"chat": {"cmd": fake_cmd("--model-name", "chat", "--tokens", "50")}}))
    await page.goto(proxy.url + "/ui")
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    chat = page.locator('tr[data-model="chat"]')
    stop_now = chat.locator('button[data-action="force"]')
    stream = await open_gated_stream(proxy, "chat")  # parked at the fake's gate: never ends by itself
    try:
        await expect(chat.locator(".inflight")).to_have_text("1", timeout=STEP_MS)
        await expect(chat.locator("button.unload")).to_have_attribute("title", "waits for the requests in flight to finish")
        pid = proxy.pid("chat")
        await stop_now.click()
        await expect(chat.locator(".state")).to_have_text("stopped", timeout=STEP_MS)
        assert pid is not None and pid_gone(pid)
        await expect(stop_now).to_have_count(0)  # only offered while requests are in flight
    finally:
        stream.close()


async def test_ui_shows_a_refused_reload(proxy_factory, page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from swapproxy.reload import Reloader

    proxy = await proxy_factory(make_config({"chat": {"cmd": fake_cmd("--model-name", "chat")}}))
    await page.goto(proxy.url + "/ui")
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    await expect(page.locator("#reload-error")).to_be_hidden()
    bad = tmp_path / "config.yaml"
    bad.write_text("models:\n  chat:\n    cmd: llama-server --port ${PORT}\n    ttll: 5\n")
    reloader = Reloader(str(bad), proxy.swapper, proxy.runtime.reload)
    assert await reloader.reload() is False
    await expect(page.locator("#reload-error")).to_be_visible(timeout=STEP_MS)
    await expect(page.locator("#reload-error-text")).to_contain_text(f"{bad}:4: models.chat.ttll:")
    await expect(page.locator("#reload-error-text")).to_contain_text("did you mean 'ttl'")


async def test_ui_switches_the_profile_and_cancels_a_request_in_flight(proxy_factory, page) -> None:  # type: ignore[no-untyped-def]
    proxy = await proxy_factory(make_config(
        {"chat": {"cmd": fake_cmd("--model-name", "chat")}, "big": {"cmd": fake_cmd("--model-name", "big")}},
        profiles={"coding": {"pins": {"llm-code": "big"}}, "writing": {"pins": {"llm-code": "chat"}}}))
    await page.goto(proxy.url + "/ui")
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    select = page.locator("#profile")
    await expect(select).to_be_visible()
    assert await select.evaluate("s => [...s.options].map(o => o.text)") == ["(none)", "coding", "writing"]
    await select.select_option("coding")
    await wait_until(lambda: proxy.runtime.profile == "coding", 10, "the profile to switch")
    status, body = await proxy.chat("llm-code")
    assert status == 200 and body["model"] == "big"
    await select.select_option("")
    await wait_until(lambda: proxy.runtime.profile is None, 10, "no profile")

    await expect(page.locator("#no-requests")).to_be_visible()
    stream = await open_gated_stream(proxy, "chat")  # never ends by itself
    try:
        row = page.locator("#requests tr[data-request]")
        await expect(row).to_have_count(1, timeout=STEP_MS)
        await expect(row).to_contain_text("POST /v1/chat/completions")
        await row.locator("button.cancel").click()
        await expect(row).to_have_count(0, timeout=STEP_MS)
        await expect(page.locator("#no-requests")).to_be_visible()
        assert proxy.runtime.inflight.list() == []
    finally:
        stream.close()


async def test_ui_shows_the_peers_and_their_health(proxy_factory, spawn, page) -> None:  # type: ignore[no-untyped-def]
    server = await spawn("--model-name", "echo")
    gone = free_port_block(1)  # nothing listens there
    proxy = await proxy_factory(make_config({"chat": {"cmd": fake_cmd("--model-name", "chat")}}, peers={
        "lab": {"proxy": server.url, "models": ["echo"]},
        "gone": {"proxy": f"http://127.0.0.1:{gone}", "models": ["far"]}}))
    await page.goto(proxy.url + "/ui")
    rows = page.locator("#peers tr[data-peer]")
    await expect(rows).to_have_count(2, timeout=STEP_MS)
    await expect(page.locator('tr[data-peer="lab"] .state')).to_have_text("up", timeout=STEP_MS)
    await expect(page.locator('tr[data-peer="lab"] .peer-model.loaded')).to_have_text("echo")
    await expect(page.locator('tr[data-peer="gone"] .state')).to_have_text("down", timeout=STEP_MS)
    await expect(page.locator('tr[data-peer="gone"]')).to_contain_text("cannot connect")
