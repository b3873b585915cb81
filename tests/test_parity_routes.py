"""Routes llama-server and llama-swap serve, through swapproxy to the fake llama-server.

Every path llama-server serves reaches the model's server with and without /v1; llama-swap's
versionless /v/... and /audioapi/... lose their prefix on the way; GET routes and the POST
routes whose body names no model go by ?model= (else the one running model); /models lists
aliases and tags as llama-server's router does (llama.cpp's test_server_model_aliases_and_tags,
reproduced), and Open WebUI's model download and delete get a 501 envelope.
"""

from __future__ import annotations

from support import fake, make_config, models

MSG = {"messages": [{"role": "user", "content": "one two three"}]}


LLAMA_SERVER_POSTS = [
    "/responses", "/v1/responses", "/chat/completions/input_tokens", "/v1/chat/completions/input_tokens",
    "/responses/input_tokens", "/v1/responses/input_tokens", "/v1/messages/count_tokens", "/tokenize",
    "/apply-template", "/infill", "/embedding", "/reranking", "/v1/reranking", "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img", "/v1/audio/voices",
]


async def test_llama_server_paths_reach_the_model_named_in_the_body(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b")))
    body = {"model": "b", "input": "one two three", "content": "x", "query": "q", "documents": ["q"], **MSG}
    for path in LLAMA_SERVER_POSTS:
        async with proxy.http.post(proxy.url + path, json=body) as resp:
            assert resp.status == 200, (path, await resp.text())
            data = await resp.json()
        if "served_path" in data:
            assert (data["served_path"], data["served_by"]) == (path, "b")
        if path.endswith(("input_tokens", "count_tokens")):
            assert data["input_tokens"] > 0
    assert proxy.swapper.running() == ["b"]


async def test_llama_swap_prefixed_routes_lose_their_prefix_upstream(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    for path, upstream in [("/v/responses", "/responses"), ("/v/messages/count_tokens", "/messages/count_tokens"),
                           ("/audioapi/v1/tasks/run", "/v1/tasks/run")]:
        async with proxy.http.post(proxy.url + path, json={"model": "a", **MSG}) as resp:
            data = await resp.json(content_type=None)
            if upstream == "/messages/count_tokens":  # the fake serves it under /v1 only, as llama-server
                assert resp.status == 404 and data["error"]["message"] == "File Not Found"
                continue
            assert resp.status == 200, data
        assert data["served_path"] == upstream
    async with proxy.http.post(proxy.url + "/v/chat/completions", json={"model": "a", **MSG}) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"].startswith("tok0")
    async with proxy.http.get(proxy.url + "/v/responses") as resp:
        assert resp.status == 405 and (await resp.json())["error"]["message"].startswith("method GET not allowed")


async def test_get_routes_and_model_less_posts_go_by_query_or_the_running_model(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a", "b")))
    async with proxy.http.get(proxy.url + "/v1/audio/voices?model=b") as resp:
        assert (await resp.json())["served_by"] == "b"
    async with proxy.http.get(proxy.url + "/sdapi/v1/loras?model=b") as resp:
        assert (await resp.json())["served_path"] == "/sdapi/v1/loras?model=b"
    # POST /slots/{id}?action=...: the body names a file, not a model; the one running model serves it
    async with proxy.http.post(proxy.url + "/slots/0?action=save", json={"filename": "s.bin"}) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    assert (data["id_slot"], data["action"], data["filename"], data["served_by"]) == (0, "save", "s.bin", "b")
    async with proxy.http.post(proxy.url + "/slots/1?action=erase&model=a", json={}) as resp:
        assert (await resp.json())["served_by"] == "a"
    # llama-server's /lora-adapters body is a list: passed on unchanged
    async with proxy.http.post(proxy.url + "/lora-adapters", json=[{"id": 0, "scale": 0.5}]) as resp:
        assert (await resp.json())["adapters"] == [{"id": 0, "scale": 0.5}]
    async with proxy.http.post(proxy.url + "/props?model=b", json={"n_predict": 3}) as resp:
        assert (await resp.json())["served_by"] == "b"
    await proxy.swapper.unload_all()
    async with proxy.http.post(proxy.url + "/slots/0?action=save", json={"filename": "s.bin"}) as resp:
        err = await resp.json()
    assert resp.status == 400 and "no model" in err["error"]["message"]  # none running, none named


async def test_health_aliases_are_open_and_the_upstream_index_leads_to_the_ui(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a"), apiKeys=["k"]))
    for path in ("/health", "/v1/health", "/wol-health"):
        async with proxy.http.get(proxy.url + path) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
    headers = {"Authorization": "Bearer k"}
    async with proxy.http.get(proxy.url + "/upstream", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/ui"


async def test_models_list_aliases_and_tags_as_llama_servers_router(proxy_factory) -> None:
    """llama.cpp's test_server_model_aliases_and_tags, through swapproxy: the model's names are
    its id and aliases (llama-server's --alias tinyllama-2,fim,code), its tags are configured."""
    proxy = await proxy_factory(make_config({"code": fake("code", "--alias", "tinyllama-2,fim,code", "--tags",
                                                          "chat,fim,small", aliases=["tinyllama-2", "fim", "code"],
                                                          tags="chat,fim,small")}))
    async with proxy.http.get(proxy.url + "/models") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert len(body["data"]) == 1
    model = body["data"][0]
    assert set(model["aliases"]) == {"tinyllama-2", "fim", "code"}
    assert set(model["tags"]) == {"chat", "fim", "small"}
    assert model["id"] == "code"
    # and the same names as the server itself lists them
    status, _ = await proxy.chat("fim")
    assert status == 200
    port = proxy.swapper.slot("code").process.spec.port
    async with proxy.http.get(f"http://127.0.0.1:{port}/models") as resp:
        upstream = (await resp.json())["data"][0]
    assert set(upstream["aliases"]) == set(model["aliases"]) and set(upstream["tags"]) == set(model["tags"])


async def test_open_webui_model_download_and_delete_get_a_501_envelope(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(models("a")))
    async with proxy.http.post(proxy.url + "/models", json={"model": "hf/some-model"}) as resp:
        assert resp.status == 501
        err = (await resp.json())["error"]
    assert err["code"] == "not_implemented" and "does not download models" in err["message"]
    async with proxy.http.delete(proxy.url + "/models?model=a") as resp:
        assert resp.status == 501
        assert "does not delete models" in (await resp.json())["error"]["message"]
    assert proxy.swapper.running() == []
    async with proxy.http.get(proxy.url + "/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["a"]  # GET /models is still the list
