"""slotCache against the real llama-server and gemma-3-270m (marker: llama).

gemma-3 is a sliding-window (SWA) model: llama-server keeps only a window of its cache
unless it runs with ``--swa-full``, and then a restored slot holds the tokens but cannot
reuse them. With ``--swa-full`` (as the example config has it) the conversation's next
message after a swap processes only the new tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support import NO_WAIT, Proxy, make_config

pytestmark = pytest.mark.llama

#: About 400 tokens of history: long enough that a miss is plain, short enough for two CPU cores.
STORY = " ".join(f"Line {i}: the lighthouse keeper counted {i * 7} ships and wrote each name down." for i in range(24))


async def chat(proxy: Proxy, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_restored_conversation_reuses_its_history(proxy_factory, llama, tmp_path: Path) -> None:
    server, model = llama
    base = f"{server} --host 127.0.0.1 --port ${{PORT}} -m {model} -t 2"
    config = make_config({"chat-a": {"cmd": f"{base} -c 2048 --swa-full", "slotCache": True},
                          "chat-b": {"cmd": f"{base} -c 512"}},
                         stateDir=str(tmp_path), healthCheckTimeout=60, **NO_WAIT)
    proxy = await proxy_factory(config)
    history = [{"role": "user", "content": STORY + "\nHow many lines were there?"}]
    first = await chat(proxy, "chat-a", history)
    history_tokens = first["timings"]["prompt_n"]
    assert history_tokens > 300
    await chat(proxy, "chat-b", [{"role": "user", "content": "hi"}])  # chat-a swapped out: saved
    history += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "And how many ships in the last line?"}]
    again = await chat(proxy, "chat-a", history)
    # the history came back from the saved slot: only the last turn was processed
    assert again["timings"]["cache_n"] >= history_tokens, again["timings"]
    assert again["timings"]["prompt_n"] < 60, again["timings"]
    counts = {f"{a}_{r}": n for (m, a, r), n in proxy.runtime.slot_cache.counts.items() if m == "chat-a"}
    assert counts == {"save_ok": 1, "restore_ok": 1, "reuse_hit": 1}
