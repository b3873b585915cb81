"""The UI's model form and config editor (ui/editor.js) in a real headless chromium.

A model is added in the form (a bad value first: its error is shown at its field), chatted
with through the API, changed, and deleted; then the config file itself is edited in the
config view (an unknown key first: refused with its line), and saved. Every change goes to
the config file on disk, and the model that was running keeps running.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from support import pid_gone, wait_until
from swapproxy.config import load_config
from test_instances import fake_model, write_config

playwright_api = pytest.importorskip("playwright.async_api") if not os.environ.get(
    "SWAPPROXY_REQUIRE_BROWSER") else __import__("playwright.async_api", fromlist=["expect"])
expect = playwright_api.expect
STEP_MS = 15_000


async def test_ui_adds_a_model_chats_with_it_and_removes_it(proxy_factory: Any, page: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, f"# hand-written\nmodels:\n  chat:   # the first\n    cmd: {fake_model('chat')}\n"
                                  "    ttl: 0\n",
                        groups={"all": {"members": ["chat"], "persistent": True}})  # nothing stops chat
    proxy = await proxy_factory(load_config(path))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(proxy.url + "/ui")
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    assert (await proxy.chat("chat"))[0] == 200
    chat_pid = proxy.pid("chat")

    # add: a bad ttl is refused, shown at its field with its line; fixed, the model appears
    await page.locator("#add-model").click()
    dialog = page.locator("#model-dialog")
    await expect(dialog).to_be_visible()
    await dialog.locator('[name="id"]').fill("added")
    await dialog.locator('[name="cmd"]').fill(fake_model("added"))
    await dialog.locator('[name="ttl"]').fill("-5")
    await dialog.locator('[name="aliases"]').fill("plus, more")
    await dialog.locator("#model-save").click()
    await expect(dialog.locator('.field-error[data-key="ttl"]')).to_contain_text("greater than or equal to -1",
                                                                                  timeout=STEP_MS)
    await expect(dialog.locator('[name="ttl"]')).to_have_attribute("aria-invalid", "true")
    assert "added" not in path.read_text()
    await dialog.locator('[name="ttl"]').fill("30")
    await dialog.locator("#model-save").click()
    await expect(dialog).to_be_hidden(timeout=STEP_MS)
    row = page.locator('tr[data-model="added"]')
    await expect(row.locator(".state")).to_have_text("stopped", timeout=STEP_MS)
    text = path.read_text()
    assert "# hand-written" in text and "  chat:   # the first" in text and "  added:" in text

    # chat with it through the API: it starts, the row follows; the first model kept running
    status, body = await proxy.chat("plus")
    assert status == 200 and body["model"] == "added"
    await expect(row.locator(".state")).to_have_text("running", timeout=STEP_MS)
    assert proxy.pid("chat") == chat_pid

    # edit: the form shows the entry as written; a new description is written to the file
    await row.locator('button[data-action="edit"]').click()
    await expect(dialog.locator('[name="cmd"]')).to_have_value(fake_model("added"), timeout=STEP_MS)
    await expect(dialog.locator('[name="aliases"]')).to_have_value("plus, more")
    await dialog.locator('[name="description"]').fill("added from the UI")
    await dialog.locator("#model-save").click()
    await expect(dialog).to_be_hidden(timeout=STEP_MS)
    await wait_until(lambda: "description: added from the UI" in path.read_text(), 10, "the file to change")

    # delete (two clicks): the row goes, its process stops, the file loses its lines
    added_pid = proxy.pid("added")
    await row.locator('button[data-action="edit"]').click()
    await dialog.locator("#model-delete").click()
    await expect(dialog.locator("#model-delete")).to_contain_text("Really delete added?")
    await dialog.locator("#model-delete").click()
    await expect(dialog).to_be_hidden(timeout=STEP_MS)
    await expect(row).to_have_count(0, timeout=STEP_MS)
    assert added_pid is not None and pid_gone(added_pid)
    assert "added" not in path.read_text() and "# hand-written" in path.read_text()
    assert proxy.pid("chat") == chat_pid
    assert errors == []


async def test_ui_config_view_saves_validates_and_shows_errors_by_line(proxy_factory: Any, page: Any,
                                                                       tmp_path: Path) -> None:
    path = write_config(tmp_path, f"models:\n  chat:\n    cmd: {fake_model('chat')}\n    ttl: 0\n")
    proxy = await proxy_factory(load_config(path))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(proxy.url + "/ui")
    await expect(page.locator("#conn")).to_have_text("live", timeout=STEP_MS)
    await page.locator("#edit-config").click()
    area = page.locator("#config-text")
    await expect(area).to_have_value(path.read_text(), timeout=STEP_MS)
    original = path.read_text()
    bad = original.replace("    ttl: 0", "    ttll: 0")
    await area.fill(bad)
    await page.locator("#config-save").click()
    line = bad.splitlines().index("    ttll: 0") + 1
    problem = page.locator("#config-errors li")
    await expect(problem).to_have_text(f"line {line}: models.chat.ttll: unknown key 'ttll'; did you mean 'ttl'?",
                                       timeout=STEP_MS)
    assert path.read_text() == original
    await problem.click()  # selects the line in the text
    assert await area.evaluate("a => a.value.slice(a.selectionStart, a.selectionEnd)") == "    ttll: 0"
    await area.fill(original.replace("    ttl: 0", "    ttl: 45\n    description: from the editor"))
    await page.locator("#config-save").click()
    await expect(page.locator("#config-result")).to_contain_text("Saved and applied", timeout=STEP_MS)
    assert proxy.runtime.config.models["chat"].ttl == 45 and "from the editor" in path.read_text()
    await expect(page.locator("#config-errors")).to_be_hidden()
    assert errors == []
