"""Memory-aware scheduling: the estimate from a GGUF's facts, the policy's memory stops, the footprint model."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fake_gpus import FakeGpus
from fake_process import FakeHub, spec
from support import fake, make_config, wait_until, write_gguf
from swapproxy.config import Config, GroupConfig
from swapproxy.estimate import footprint, parse_options
from swapproxy.learned import Learned
from swapproxy.memory import MemoryModel
from swapproxy.policy import Occupant, Resources, plan
from swapproxy.scheduler import Scheduler
from swapproxy.states import ProcessState

MiB, GiB = 1 << 20, 1 << 30
#: gemma-3-270m's facts, as swapproxy.gguf_facts reads them from the Q4_K_M file.
GEMMA = {"arch": "gemma3", "n_layer": 18, "n_embd": 640, "n_ff": 2048, "n_head_kv": [1] * 18, "key_length": 256,
         "value_length": 256, "n_swa": 512, "windowed": [(i + 1) % 6 != 0 for i in range(18)],
         "n_ctx_train": 32768, "n_vocab": 262144, "weights": 246587904}


# -- the estimate ---------------------------------------------------------------------------------------
def test_command_options_that_size_a_model() -> None:
    opts = parse_options(["llama-server", "-m", "/m/x.gguf", "--ctx-size=8192", "-np", "2", "-ngl", "0",
                          "-ctk", "q8_0", "--swa-full", "--port", "5800"])
    assert (opts.model, opts.ctx, opts.parallel, opts.ngl, opts.ctk, opts.ctv, opts.swa_full) == (
        "/m/x.gguf", 8192, 2, 0, "q8_0", "f16", True)
    assert parse_options(["llama-server", "-hf", "org/repo"]).remote
    defaults = parse_options(["llama-server", "-m", "x.gguf"])
    assert (defaults.ctx, defaults.parallel, defaults.ngl, defaults.ubatch) == (0, 4, None, 512)


def test_the_estimate_matches_what_llama_server_allocates() -> None:
    """llama-server's own log for gemma-3-270m at -c 8192 (4 slots): KV 24 + 37.5 MiB, compute 28.78 MiB,
    output 4 MiB; weights 246,587,904 bytes; plus the process itself (64 MiB here)."""
    got = footprint(GEMMA, parse_options(["-m", "g.gguf", "-c", "8192"]), gpu=False)["host"]
    expected = 246587904 + (24 + 37.5 + 28.78 + 4 + 64) * MiB
    assert abs(got - expected) < 1 * MiB
    # the full cache for windowed layers, and one slot: the sizes its log reports for those
    full = footprint(GEMMA, parse_options(["-m", "g.gguf", "-c", "8192", "--swa-full"]), gpu=False)["host"]
    assert abs(full - got - ((120 - 37.5) + (34.28 - 28.78)) * MiB) < 1 * MiB
    one = footprint(GEMMA, parse_options(["-m", "g.gguf", "-c", "8192", "-np", "1"]), gpu=False)["host"]
    assert abs(got - one - ((37.5 - 15) + (28.78 - 27.28) + 3) * MiB) < 1 * MiB


def test_with_a_gpu_the_weights_and_cache_go_there_unless_no_layers_do() -> None:
    on_gpu = footprint(GEMMA, parse_options(["-m", "g.gguf", "-c", "4096"]), gpu=True)
    assert set(on_gpu) == {"gpu0", "host"} and on_gpu["gpu0"] > 246587904
    assert set(footprint(GEMMA, parse_options(["-m", "g.gguf", "-ngl", "0"]), gpu=True)) == {"host"}
    half = footprint(GEMMA, parse_options(["-m", "g.gguf", "-ngl", "9"]), gpu=True)
    assert half["gpu0"] < on_gpu["gpu0"] and half["host"] > on_gpu["host"]


# -- the policy -----------------------------------------------------------------------------------------
def shared(*ids: str, persistent: Iterable[str] = ()) -> Config:
    """Models the rules let run together (one group with swap: false), so memory alone decides."""
    keep = tuple(persistent)
    groups = [GroupConfig("all", swap=False, exclusive=False, members=tuple(m for m in ids if m not in keep))]
    if keep:
        groups.append(GroupConfig("keep", swap=False, exclusive=False, persistent=True, members=keep))
    return Config(models={m: spec(m) for m in ids}, groups=tuple(groups))


def test_memory_adds_only_the_stops_needed_cheapest_first() -> None:
    cfg = shared("a", "b", "c", "d")
    resources = Resources({"gpu0": 10 * GiB}, {"a": {"gpu0": 4 * GiB}, "b": {"gpu0": 4 * GiB},
                                                "c": {"gpu0": 3 * GiB}, "d": {"gpu0": 5 * GiB}})
    assert plan(cfg, "b", [Occupant("a")], resources).evict == ()  # 8 of 10: both fit
    # d needs 5: of a (used at 2) and b (at 1), the least recently used goes
    got = plan(cfg, "d", [Occupant("a", last_used=2.0), Occupant("b", last_used=1.0)], resources)
    assert got.evict == ("b",)
    # an idle model goes before a busy one, whatever their age
    got = plan(cfg, "d", [Occupant("a", last_used=2.0), Occupant("b", busy=True, last_used=1.0)], resources)
    assert got.evict == ("a",)
    # a stop seconds longer (a slot cache to save) outweighs recency; a fraction of a second does not
    got = plan(cfg, "d", [Occupant("a", last_used=2.0), Occupant("b", last_used=1.0, stop_cost=4.0)], resources)
    assert got.evict == ("a",)
    got = plan(cfg, "d", [Occupant("a", last_used=2.0), Occupant("b", last_used=1.0, stop_cost=0.4)], resources)
    assert got.evict == ("b",)


def test_memory_never_lets_models_run_together_that_the_rules_keep_apart() -> None:
    cfg = Config(models={m: spec(m) for m in "ab"})  # no groups: one at a time
    resources = Resources({"host": 100 * GiB}, {"a": {"host": GiB}, "b": {"host": GiB}})
    assert plan(cfg, "b", [Occupant("a")], resources).evict == ("a",)


def test_an_unknown_footprint_takes_the_whole_device() -> None:
    cfg = shared("a", "b")
    resources = Resources({"gpu0": 10 * GiB}, {"a": {"gpu0": GiB}, "b": None})
    assert plan(cfg, "b", [Occupant("a")], resources).evict == ("a",)
    assert plan(cfg, "a", [Occupant("b")], resources).evict == ("b",)


def test_persistent_models_go_last_and_overlap_when_it_fits_beside_the_stopping_ones() -> None:
    cfg = shared("a", "emb", "big", persistent=["emb"])
    resources = Resources({"gpu0": 10 * GiB}, {"a": {"gpu0": 4 * GiB}, "emb": {"gpu0": GiB},
                                               "big": {"gpu0": 6 * GiB}})
    got = plan(cfg, "big", [Occupant("emb", last_used=0.0), Occupant("a", last_used=5.0)], resources)
    assert got.evict == ("a",) and not got.overlap  # 1 + 4 + 6 > 10: wait for a to be gone
    roomy = Resources({"gpu0": 12 * GiB}, resources.footprints)
    got = plan(cfg, "big", [Occupant("emb"), Occupant("a")], roomy)
    assert got.evict == () and not got.overlap
    cfg_swap = Config(models=cfg.models, groups=(GroupConfig("g", swap=True, exclusive=True, members=("a", "big")),
                                                 GroupConfig("keep", swap=False, exclusive=False, persistent=True,
                                                             members=("emb",))))
    got = plan(cfg_swap, "big", [Occupant("emb"), Occupant("a")], roomy)
    assert got.evict == ("a",) and got.overlap  # the rules stop a; memory lets big start meanwhile
    too_big = plan(cfg, "big", [], Resources({"gpu0": 4 * GiB}, resources.footprints))
    assert too_big.over == {"gpu0": 2 * GiB}


# -- the scheduler with memory --------------------------------------------------------------------------
async def test_two_models_that_fit_never_stop_each_other() -> None:
    cfg = shared("a", "b", "c")
    resources = Resources({"host": 10 * GiB}, {"a": {"host": 4 * GiB}, "b": {"host": 4 * GiB},
                                               "c": {"host": 7 * GiB}})
    hub = FakeHub()
    scheduler = Scheduler(cfg, hub, resources=lambda: resources)
    stopped: list[tuple[str, ...]] = []
    scheduler.swap_listeners.append(lambda event: stopped.append(event.stopped))
    for model_id in ("a", "b", "a", "b", "c", "a", "b"):
        (await scheduler.acquire(model_id)).release()
    assert stopped == [("a", "b"), ("c",)]
    assert scheduler.running() == ["a", "b"]


# -- the footprint model --------------------------------------------------------------------------------
def model_config(tmp: Path, **memory: Any) -> Config:
    return make_config({"declared": {"cmd": "srv --port ${PORT}", "memory": "3GiB"},
                        "wrapped": {"cmd": "run-model.sh --port ${PORT}"}},
                       stateDir=str(tmp), memory=memory)


def test_budgets_come_from_nvml_unless_declared_less_the_reserve(tmp_path: Path) -> None:
    config = model_config(tmp_path, reserve="1GiB", devices={"host": "8GiB"})
    memory = MemoryModel(lambda: config, Learned(tmp_path), FakeGpus(24 * GiB, 16 * GiB))
    assert memory.budgets() == {"gpu0": 23 * GiB, "gpu1": 15 * GiB, "host": 7 * GiB}
    assert memory.footprint(config.models["declared"]) == ({"gpu0": 3 * GiB}, "declared")
    assert memory.footprint(config.models["wrapped"]) == (None, "unknown")
    assert "names no model file" in (memory.why_unknown(config.models["wrapped"]) or "")
    no_gpu = MemoryModel(lambda: config, Learned(tmp_path), FakeGpus())
    assert no_gpu.footprint(config.models["declared"]) == ({"host": 3 * GiB}, "declared")
    assert MemoryModel(lambda: model_config(tmp_path), Learned(tmp_path)).resources() is None  # no budget


def test_what_a_model_really_used_is_learned_and_kept(tmp_path: Path) -> None:
    config = model_config(tmp_path, devices={"host": "8GiB"})
    gpus = FakeGpus(24 * GiB)
    gpus.used[os.getpid()] = {"gpu0": 5 * GiB}
    memory = MemoryModel(lambda: config, Learned(tmp_path), gpus)
    measured = memory.measure([(config.models["wrapped"], os.getpid())])
    assert measured["wrapped"]["gpu0"] == 5 * GiB and measured["wrapped"]["host"] > 10 * MiB
    again = MemoryModel(lambda: config, Learned(tmp_path), gpus)  # a restart reads it back
    assert again.footprint(config.models["wrapped"]) == (measured["wrapped"], "learned")


def test_a_real_gguf_file_is_read_in_a_helper_process(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    config = make_config({"tiny": {"cmd": f"llama-server -m {path} -c 1024 -np 1 --port ${{PORT}}"}},
                         stateDir=str(tmp_path), memory={"devices": {"host": "1GiB"}})
    memory = MemoryModel(lambda: config, Learned(tmp_path))
    assert memory.footprint(config.models["tiny"]) == (None, "unknown")
    assert memory.read_gguf_files() == 1
    got, source = memory.footprint(config.models["tiny"])
    kv = 2 * 1024 * 2 * (16 + 16) * 2  # layers x cells x kv heads x (k + v head dims) x f16
    assert source == "estimated" and got is not None and got["host"] > 64 * 64 * 4 + kv
    assert MemoryModel(lambda: config, Learned(tmp_path)).footprint(config.models["tiny"])[1] == "estimated"


async def test_the_proxy_starts_a_model_beside_another_when_it_fits(proxy_factory: Any) -> None:
    config = make_config({"a": fake("a", memory="3GiB"), "b": fake("b", memory="3GiB"),
                          "c": fake("c", memory="5GiB")},
                         memory={"devices": {"host": "8GiB"}, "shareDefaultGroup": True})
    proxy = await proxy_factory(config)
    for model_id in ("a", "b"):
        assert (await proxy.chat(model_id))[0] == 200
    assert proxy.swapper.running() == ["a", "b"]  # 6 of 8 GiB: together
    assert (await proxy.chat("c"))[0] == 200  # 5 more: one of them has to go
    await wait_until(lambda: len(proxy.swapper.running()) == 2, what="one stopped for c")
    assert "c" in proxy.swapper.running()
    assert proxy.swapper.slot("a").process.state is ProcessState.STOPPED  # the least recently used


async def test_running_details_and_metrics_show_footprints_and_budgets(proxy_factory: Any) -> None:
    config = make_config({"a": fake("a", memory={"host": "3GiB"}), "w": fake("w")},
                         memory={"devices": {"host": "8GiB"}, "reserve": "1GiB"})
    proxy = await proxy_factory(config)
    assert (await proxy.chat("a"))[0] == 200
    async with proxy.http.get(proxy.url + "/running?details=1") as resp:
        body = await resp.json()
    assert body["details"]["a"]["memory"] == {"bytes": {"host": 3 * GiB}, "source": "declared"}
    assert body["devices"] == {"host": {"budget": 7 * GiB, "planned": 3 * GiB, "used": None, "total": None}}
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("swapproxy_model_memory_bytes", (("device", "host"), ("model", "a"), ("source", "declared")))] \
        == 3 * GiB
    assert samples[("swapproxy_device_memory_budget_bytes", (("device", "host"),))] == 7 * GiB
    assert not any(name == "swapproxy_model_memory_bytes" and ("model", "w") in labels for name, labels in samples)


def test_check_prints_footprints_and_what_runs_together(tmp_path: Path) -> None:
    import subprocess
    import sys
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stateDir: " + str(tmp_path) + "\n"
                   "memory: {devices: {host: 8GiB}}\n"
                   "groups: {side: {swap: false, exclusive: false, members: [a, b, c]}}\n"
                   "models:\n"
                   "  a: {cmd: 'srv --port ${PORT}', memory: 3GiB}\n"
                   "  b: {cmd: 'srv --port ${PORT}', memory: 3GiB}\n"
                   "  c: {cmd: 'srv --port ${PORT}', memory: 6GiB}\n")
    out = subprocess.run([sys.executable, "-m", "swapproxy", "check", "-c", str(cfg)], capture_output=True,
                         text=True, check=True).stdout
    assert "memory budgets: host 8.0 GiB" in out
    assert "footprint c: 6.0 GiB on host (declared)" in out
    assert "a runs beside: b\n" in out and "c runs beside: nothing (it runs alone)" in out


async def test_where_memory_allows_the_new_model_starts_while_the_old_one_stops() -> None:
    groups = (GroupConfig("chat", swap=True, exclusive=False, members=("a", "b")),)
    cfg = Config(models={m: spec(m) for m in "ab"}, groups=groups)
    for room, overlaps in ((10 * GiB, True), (6 * GiB, False)):
        resources = Resources({"gpu0": room}, {"a": {"gpu0": 4 * GiB}, "b": {"gpu0": 4 * GiB}})
        hub = FakeHub()
        scheduler = Scheduler(cfg, hub, resources=lambda r=resources: r)
        (await scheduler.acquire("a")).release()
        hub.stop_gates["a"] = gate = asyncio.Event()  # a's exit takes as long as the test says
        swap = asyncio.ensure_future(scheduler.acquire("b"))
        if overlaps:  # 4 + 4 of 10: b is ready while a is still stopping
            (await asyncio.wait_for(swap, 1)).release()
            assert scheduler.slot("a").process.state is ProcessState.STOPPING
            gate.set()
        else:  # 4 + 4 of 6: b starts only once a is gone
            await wait_until(lambda: scheduler.slot("a").process.state is ProcessState.STOPPING)
            assert scheduler.slot("b").process.state is ProcessState.STOPPED
            gate.set()
            (await asyncio.wait_for(swap, 1)).release()
        await wait_until(lambda: scheduler.slot("a").process.state is ProcessState.STOPPED)
