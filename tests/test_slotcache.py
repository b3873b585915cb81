"""slotCache: a model's llama-server slots saved before a graceful stop, restored after its next start.

Real swapproxy, real fake llama-server processes (run with ``--slot-save-path``, which
swapproxy adds): the fake's slot 0 keeps the last prompt and answer, its save and restore
write and read a real file, and the next completion's ``timings.cache_n`` says how much of
its prompt the cache held. The failure paths use the fake's ``--slot-save-fail``,
``--slot-save-hang`` and ``--slot-restore-fail``.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import NO_WAIT, Proxy, fake, make_config, open_gated_stream, wait_until, write_gguf
from swapproxy.config import ConfigError
from swapproxy.progress import STAGES
from swapproxy.slotcache import META_FILE, is_slot_file_action
from swapproxy.states import ProcessState

HISTORY = "one two three four five six seven eight"


def conversation(*turns: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": " ".join(turns)}]}


async def ask(proxy: Proxy, model: str, *turns: str) -> dict[str, Any]:
    async with proxy.http.post(proxy.url + "/v1/chat/completions",
                               json={"model": model, **conversation(*turns)}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def details(proxy: Proxy) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + "/running?details=1") as resp:
        return await resp.json()


def counts(proxy: Proxy, model: str) -> dict[str, int]:
    return {f"{a}_{r}": n for (m, a, r), n in proxy.runtime.slot_cache.counts.items() if m == model}


def slot_folder(proxy: Proxy, model: str) -> Path:
    folder = proxy.runtime.slot_cache.folder(proxy.runtime.config.models[model])
    assert folder is not None
    return folder


def cached(model: str, *flags: str, **keys: Any) -> dict[str, Any]:
    return fake(model, *flags, slotCache=keys or True)


async def test_a_conversation_survives_a_swap(proxy_factory, tmp_path: Path) -> None:
    proxy = await proxy_factory(make_config({"a": cached("a"), "b": fake("b")}, stateDir=str(tmp_path), **NO_WAIT))
    first = await ask(proxy, "a", HISTORY)
    assert first["timings"]["cache_n"] == 0
    await ask(proxy, "b", "hello")  # a is swapped out: its slot is saved first
    folder = slot_folder(proxy, "a")
    assert folder.parent == tmp_path / "slots"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    meta = json.loads((folder / META_FILE).read_text())
    history = len(HISTORY.split()) + first["usage"]["completion_tokens"]
    assert meta["saved"] == [{"id": 0, "file": "slot-0.bin", "tokens": history}]
    assert counts(proxy, "a") == {"save_ok": 1}

    answer = first["choices"][0]["message"]["content"]
    again = await ask(proxy, "a", HISTORY, answer, "nine ten")  # the next message of the same chat
    assert again["timings"]["cache_n"] == history  # its history came from the restored slot
    assert again["timings"]["prompt_n"] == 2
    assert counts(proxy, "a") == {"save_ok": 1, "restore_ok": 1, "reuse_hit": 1}

    body = await details(proxy)
    saved = body["slot_cache"]["models"]["a"]
    assert saved["slots"] == 1 and saved["tokens"] == history and saved["bytes"] > 0
    assert saved["last"]["reused_tokens"] == history
    assert "b" not in body["slot_cache"]["models"]
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    assert 'swapproxy_slot_cache_total{action="reuse",model="a",result="hit"} 1.0' in text
    assert 'swapproxy_slot_cache_bytes{model="a"}' in text


async def test_the_slots_are_restored_before_waiting_requests_are_let_in(proxy_factory, tmp_path: Path) -> None:
    """The restore is a stage of the start (shown in /running): the request waits it out, and is the
    first to find the cache."""
    proxy = await proxy_factory(make_config({"a": cached("a", "--slot-restore-delay", "30"), "b": fake("b")},
                                            stateDir=str(tmp_path), **NO_WAIT))
    first = await ask(proxy, "a", HISTORY)
    await ask(proxy, "b", "hello")
    waiting = asyncio.ensure_future(ask(proxy, "a", HISTORY, first["choices"][0]["message"]["content"]))
    try:
        seen: list[str | None] = []

        async def restoring() -> bool:
            seen.append((await details(proxy)).get("details", {}).get("a", {}).get("stage"))
            return seen[-1] == "restoring slots"

        await wait_until(restoring, 20, "the restore stage in /running")
        assert not waiting.done()
        assert proxy.swapper.slot("a").process.state is ProcessState.STARTING
        async with proxy.http.post(proxy.runtime.config.models["a"].proxy + "/debug/release") as resp:
            assert resp.status == 200  # (the fake's hook: lets the restore finish now)
        again = await waiting
    finally:
        waiting.cancel()
    assert again["timings"]["cache_n"] > 0
    assert all(stage is None or stage in STAGES for stage in seen)  # the stages of a start, then the restore


@pytest.mark.parametrize("flag, result", [("--slot-save-fail", "failed"), ("--slot-save-hang", "timeout")])
async def test_a_save_that_fails_or_hangs_does_not_hold_the_swap(proxy_factory, tmp_path: Path, flag: str,
                                                                 result: str) -> None:
    proxy = await proxy_factory(make_config({"a": cached("a", flag, saveTimeout=0.3), "b": fake("b")},
                                            stateDir=str(tmp_path), **NO_WAIT))
    await ask(proxy, "a", HISTORY)
    await ask(proxy, "b", "hello")  # served: the stop of a went on without its save
    assert counts(proxy, "a") == {f"save_{result}": 1}
    assert proxy.swapper.slot("a").process.state is ProcessState.STOPPED
    assert not list(slot_folder(proxy, "a").glob("slot-*"))  # nothing half-written kept
    again = await ask(proxy, "a", HISTORY)  # nothing to restore: a plain start
    assert again["timings"]["cache_n"] == 0
    assert "restore_ok" not in counts(proxy, "a")


async def test_a_failed_restore_starts_the_model_without_its_cache(proxy_factory, tmp_path: Path) -> None:
    proxy = await proxy_factory(make_config({"a": cached("a", "--slot-restore-fail"), "b": fake("b")},
                                            stateDir=str(tmp_path), **NO_WAIT))
    first = await ask(proxy, "a", HISTORY)
    await ask(proxy, "b", "hello")
    again = await ask(proxy, "a", HISTORY, first["choices"][0]["message"]["content"])
    assert again["timings"]["cache_n"] == 0
    assert counts(proxy, "a") == {"save_ok": 1, "restore_failed": 1}
    assert (await details(proxy))["slot_cache"]["models"]["a"]["last"]["result"] == "failed"


async def test_the_files_survive_a_restart_and_a_changed_command_discards_them(proxy_factory,
                                                                               tmp_path: Path) -> None:
    models = {"a": cached("a"), "b": fake("b")}
    proxy = await proxy_factory(make_config(models, stateDir=str(tmp_path), **NO_WAIT))
    first = await ask(proxy, "a", HISTORY)
    answer = first["choices"][0]["message"]["content"]
    async with proxy.http.post(proxy.url + "/api/models/unload/a") as resp:  # a graceful unload saves
        assert resp.status == 200
    assert counts(proxy, "a") == {"save_ok": 1}
    await proxy.swapper.shutdown()

    again = await proxy_factory(make_config(models, stateDir=str(tmp_path), **NO_WAIT))  # a new swapproxy
    reply = await ask(again, "a", HISTORY, answer)
    assert reply["timings"]["cache_n"] > 0
    assert counts(again, "a") == {"restore_ok": 1, "reuse_hit": 1}
    async with again.http.post(again.url + "/api/models/unload/a") as resp:
        assert resp.status == 200
    await again.swapper.shutdown()

    changed = {"a": cached("a", "--tokens", "3"), "b": fake("b")}  # another command: its cache is not ours
    third = await proxy_factory(make_config(changed, stateDir=str(tmp_path), **NO_WAIT))
    reply = await ask(third, "a", HISTORY, answer)
    assert reply["timings"]["cache_n"] == 0
    assert counts(third, "a") == {"restore_discarded": 1}
    assert not list(slot_folder(third, "a").iterdir())


async def test_a_ttl_unload_saves_and_a_forced_unload_does_not(proxy_factory, tmp_path: Path) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", slotCache=True, ttl=0.2)}, stateDir=str(tmp_path)))
    await ask(proxy, "a", HISTORY)
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.STOPPED, 10, "the ttl unload")
    assert counts(proxy, "a") == {"save_ok": 1}
    stream = await open_gated_stream(proxy, "a")  # in flight: no ttl runs out meanwhile
    async with proxy.http.post(proxy.url + "/api/models/unload/a?force=1") as resp:
        assert resp.status == 200
    stream.release()
    assert counts(proxy, "a") == {"save_ok": 1, "restore_ok": 1}  # no second save


async def test_the_disk_budget_drops_the_oldest_files(proxy_factory, tmp_path: Path) -> None:
    pad = ("--slot-file-bytes", "600000")
    proxy = await proxy_factory(make_config({"a": cached("a", *pad), "b": cached("b", *pad)},
                                            stateDir=str(tmp_path), slotCache={"budget": "1MB"}, **NO_WAIT))
    await ask(proxy, "a", HISTORY)
    await ask(proxy, "b", HISTORY)  # a saved: 600 kB
    assert (slot_folder(proxy, "a") / "slot-0.bin").is_file()
    # b is saved before a starts: 1.2 MB is over the budget, and a's file, the older, goes
    again = await ask(proxy, "a", HISTORY)
    assert not (slot_folder(proxy, "a") / "slot-0.bin").exists()
    assert (slot_folder(proxy, "b") / "slot-0.bin").is_file()
    assert again["timings"]["cache_n"] == 0
    assert counts(proxy, "a") == {"save_ok": 1, "restore_dropped": 1}
    usage = proxy.runtime.slot_cache.usage()
    assert 0 < sum(usage.values()) <= 1_000_000 and usage == {"a": 0, "b": usage["b"]}
    reply = await ask(proxy, "b", HISTORY)  # a saved, b's older file dropped: b starts without
    assert reply["timings"]["cache_n"] == 0 and counts(proxy, "b")["restore_dropped"] == 1


async def test_removing_a_model_deletes_its_saved_slots(proxy_factory, tmp_path: Path) -> None:
    proxy = await proxy_factory(make_config({"a": cached("a"), "b": cached("b")}, stateDir=str(tmp_path)))
    await ask(proxy, "a", HISTORY)
    await ask(proxy, "b", HISTORY)
    folder_a, folder_b = slot_folder(proxy, "a"), slot_folder(proxy, "b")
    assert (folder_a / META_FILE).is_file()
    new = make_config({"b": cached("b")}, stateDir=str(tmp_path))
    await proxy.swapper.apply_config(new)
    proxy.runtime.slot_cache.forget_removed()  # (what the reloader's listener does after a reload)
    assert not folder_a.exists() and folder_b.is_dir()


async def test_clients_cannot_save_or_restore_the_slots_swapproxy_keeps(proxy_factory, tmp_path: Path) -> None:
    proxy = await proxy_factory(make_config({"a": cached("a"), "plain": fake("plain")}, stateDir=str(tmp_path)))
    await ask(proxy, "a", HISTORY)
    refused = [
        ("/slots/0?action=save&model=a", {"filename": "x.bin"}),
        ("/slots/0?action=restore&model=a", {"filename": "slot-0.bin"}),
        ("/slots/0?action=erase&action=save&model=a", {"filename": "x.bin"}),
        ("/upstream/a/slots/0?action=save", {"filename": "x.bin"}),
        ("/upstream/a/%73lots/0?action=Restore", {"filename": "slot-0.bin"}),
        ("/upstream/a//slots/0?%61ction=save", {"filename": "x.bin"}),
    ]
    for path, body in refused:
        async with proxy.http.post(proxy.url + path, json=body) as resp:
            data = await resp.json()
            assert resp.status == 403, (path, data)
            assert data["error"]["code"] == "slot_cache_managed"
    assert not (slot_folder(proxy, "a") / "x.bin").exists()
    async with proxy.http.post(proxy.url + "/slots/0?action=erase&model=a", json={}) as resp:
        assert resp.status == 200 and (await resp.json())["n_erased"] > 0
    async with proxy.http.post(proxy.url + "/slots/0?action=save&model=plain", json={"filename": "x.bin"}) as resp:
        assert resp.status == 200  # a model without slotCache: its slots are the client's


def test_which_requests_are_slot_file_actions() -> None:
    assert is_slot_file_action("POST", "/slots/0", "action=save")
    assert is_slot_file_action("post", "/slots/%30", "action=%20restore")
    assert is_slot_file_action("POST", "//slots//3/", "action=erase&action=save")
    assert not is_slot_file_action("POST", "/slots/0", "action=erase")
    assert not is_slot_file_action("GET", "/slots", "action=save")
    assert not is_slot_file_action("POST", "/slots/0/x", "action=save")
    assert not is_slot_file_action("POST", "/v1/chat/completions", "action=save")


def test_the_config_keys_and_their_problems() -> None:
    models = {"a": cached("a", saveTimeout=4), "b": fake("b")}
    config = make_config(models, slotCache={"budget": "2GiB"})
    assert (config.models["a"].slot_cache, config.models["a"].slot_save_timeout) == (True, 4.0)
    assert config.models["b"].slot_cache is False
    assert config.slot_cache_budget == 2 << 30
    with pytest.raises(ConfigError) as info:
        make_config({"a": cached("a")}, stateDir="")
    assert [p.key_path for p in info.value.problems] == ["models.a.slotCache"]
    with pytest.raises(ConfigError) as info:
        make_config({"a": fake("a", slotCache="yes please")})
    assert [p.key_path for p in info.value.problems][0].startswith("models.a.slotCache")
    with pytest.raises(ConfigError) as info:
        make_config({"a": cached("a")}, slotCache={"budget": "lots"})
    assert [p.key_path for p in info.value.problems] == ["slotCache.budget"]


def test_check_says_when_a_sliding_window_model_cannot_reuse_its_slots(tmp_path: Path) -> None:
    gguf_file = write_gguf(tmp_path / "swa.gguf", arch="gemma3", layers=6, sliding_window=512)
    cfg = tmp_path / "c.yaml"
    for flags, notices in (("", 1), ("--swa-full", 0)):
        cfg.write_text(f"stateDir: {tmp_path}\n"
                       "models:\n"
                       f"  a: {{cmd: 'llama-server -m {gguf_file} {flags} --port ${{PORT}}', slotCache: true}}\n"
                       f"  b: {{cmd: 'llama-server -m {gguf_file} --port ${{PORT}}'}}\n")
        out = subprocess.run([sys.executable, "-m", "swapproxy", "check", "-c", str(cfg)], capture_output=True,
                             text=True, check=True).stdout
        assert out.count("notice") == notices, out
        assert "notice b" not in out  # without slotCache the window is no concern of ours
        if notices:
            assert "notice a: slotCache on a sliding-window model without --swa-full" in out
