"""What /v1/models says about each model: its GGUF's parameters, quantisation and size, and its context once loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import Proxy, fake_cmd, make_config, wait_until, write_gguf
from swapproxy.describe import describe, params_string

Q4_K_M = 15


def test_gemma_270m_as_open_webui_and_llama_server_name_it() -> None:
    facts = {"arch": "gemma3", "size_label": "270M", "file_type": Q4_K_M, "n_ctx_train": 32768,
             "weights": 246587904, "parameters": 268098176}
    fields, meta = describe(facts, n_ctx=1024)
    assert fields == {"params_string": "270M", "quantization": {"name": "Q4_K_M", "bits_per_weight": 7.36},
                      "size_bytes": 246587904, "arch": "gemma3"}
    assert meta == {"size": 246587904, "n_params": 268098176, "n_ctx_train": 32768, "n_ctx": 1024}
    assert describe(None) == ({}, {})  # no file known (-hf, a wrapper script): nothing made up


def test_a_parameter_count_without_a_label() -> None:
    assert params_string({"parameters": 7_241_732_096}) == "7.2B"
    assert params_string({"parameters": 8_030_000_000}) == "8B"
    assert params_string({"parameters": 268_098_176}) == "268M"
    assert params_string({"size_label": "8x7B", "parameters": 46_700_000_000}) == "8x7B"
    assert params_string({}) is None


async def _entry(proxy: Proxy, model_id: str) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + "/v1/models") as resp:
        return next(m for m in (await resp.json())["data"] if m["id"] == model_id)


async def test_the_model_list_carries_what_the_gguf_and_props_say(proxy_factory, tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "tiny-q8.gguf", context=2048, file_type=7, size_label="4K")
    proxy = await proxy_factory(make_config({
        "tiny": {"cmd": fake_cmd("--model-name", "tiny", "-m", str(gguf), "-c", "512"), "metadata": {"k": 1}},
        "plain": {"cmd": fake_cmd("--model-name", "plain")},
    }, stateDir=str(tmp_path)))

    async def listed() -> bool:  # the GGUF is read in a helper process after start-up
        return "params_string" in await _entry(proxy, "tiny")

    await wait_until(listed, 20, "the GGUF's facts in /v1/models")
    entry = await _entry(proxy, "tiny")
    # Open WebUI 0.12.4's model picker (llama.cpp connections): params_string, quantization.name, size_bytes
    assert entry["params_string"] == "4K"
    assert entry["quantization"] == {"name": "Q8_0", "bits_per_weight": 32.0}
    assert entry["size_bytes"] == 64 * 64 * 4
    assert entry["meta"] == {"size": 16384, "n_params": 4096, "n_ctx_train": 2048, "k": 1}  # not loaded: no n_ctx
    assert "params_string" not in await _entry(proxy, "plain")  # no -m: nothing known, nothing said

    assert (await proxy.chat("tiny"))[0] == 200

    async def context_listed() -> bool:
        return (await _entry(proxy, "tiny"))["meta"].get("n_ctx") == 512  # llama-server's /props, once loaded

    await wait_until(context_listed, 10, "n_ctx from /props")
    assert (await _entry(proxy, "tiny"))["status"]["value"] == "loaded"
    assert (await proxy.chat("plain"))[0] == 200  # tiny swapped out: its n_ctx goes with it
    assert "n_ctx" not in (await _entry(proxy, "tiny"))["meta"]
