"""llamactl's instance API with the real llama-server (marker: llama).

The default "configured llama-server" is the build scripts/install_llama.py put in the cache:
a create body of llamactl's shape must give a command the real binary accepts, its
/api/v1/server/* answers must be the binary's own, and the proxy route must reach it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support import STATE_DIR, free_port_block, wait_until
from swapproxy.config import load_config
from swapproxy.states import ProcessState

pytestmark = pytest.mark.llama


async def test_a_llamactl_instance_of_the_real_llama_server(proxy_factory: Any, llama: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    server, model = llama
    path = tmp_path / "config.yaml"
    path.write_text(f"# real llama-server\nstartPort: {free_port_block(4)}\nhealthCheckTimeout: 60\n"
                    f"stateDir: {STATE_DIR}\ninstances:\n  llamaServer: {server}\n"
                    f"models:\n  placeholder:\n    cmd: {server} -m {model} --port ${{PORT}}\n")
    proxy = await proxy_factory(load_config(path))
    async with proxy.http.get(proxy.url + "/api/v1/server/version") as r:
        assert r.status == 200 and "version:" in await r.text()
    async with proxy.http.get(proxy.url + "/api/v1/server/help") as r:
        assert "--ctx-size" in await r.text()
    body = {"backend_type": "llama_cpp", "backend_options": {"model": str(model), "ctx_size": 512, "threads": 2}}
    async with proxy.http.post(proxy.url + "/api/v1/instances/gemma", json=body) as r:
        assert r.status == 201, await r.text()
    await wait_until(lambda: proxy.swapper.slot("gemma").process.state is ProcessState.READY, 60, "gemma ready")
    async with proxy.http.post(proxy.url + "/api/v1/instances/gemma/proxy/completion",
                               json={"prompt": "Hello, world!", "n_predict": 4}) as r:
        assert r.status == 200 and "content" in json.loads(await r.text())
    async with proxy.http.get(proxy.url + "/api/v1/instances/gemma/logs?lines=400") as r:
        assert "listening" in await r.text()
    async with proxy.http.delete(proxy.url + "/api/v1/instances/gemma") as r:
        assert r.status == 204
    assert "  gemma:" not in path.read_text() and path.read_text().startswith("# real llama-server")
