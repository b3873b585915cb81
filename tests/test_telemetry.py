"""GPU telemetry: NVML samples in /running?details=1 and /metrics, per model and per device.

There is no GPU here: swapproxy runs with a fake provider behind the NVML seam
(tests/fake_gpus.py), real fake llama-servers and a real socket. The NVML
reader itself is driven through a stand-in for the ``pynvml`` module, and the
real ``pynvml`` is asked what it finds on this machine.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fake_gpus import FakeGpus
from support import Proxy, fake, make_config, wait_until
from swapproxy.nvml import NoGpu, NvmlProvider, gpu_provider

GiB = 1 << 30


async def details(proxy: Proxy) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + "/running?details=1") as resp:
        return await resp.json()


async def samples(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_gpu_samples_and_each_models_gpu_memory(proxy_factory) -> None:
    gpus = FakeGpus(24 * GiB, 16 * GiB, every_process={"gpu0": 2 * GiB})
    gpus.device_used = [3 * GiB, 0]
    gpus.readings = {"utilization": 37.0, "temperature": 61.0, "power": 180.5, "memory_utilization": 12.0}
    proxy = await proxy_factory(make_config({"a": fake("a"), "b": fake("b")}), gpus=gpus)
    assert (await proxy.chat("a"))[0] == 200

    async def a_holds_its_gpu_memory() -> bool:
        return (await details(proxy))["details"].get("a", {}).get("gpu_memory") == {"gpu0": 2 * GiB}

    await wait_until(a_holds_its_gpu_memory, 10, "a's GPU memory in /running (sampled once it is ready)")
    body = await details(proxy)
    assert [g["device"] for g in body["gpus"]] == ["gpu0", "gpu1"]
    first = body["gpus"][0]
    assert (first["memory_total"], first["memory_used"], first["utilization_pct"], first["power_w"]) == (
        24 * GiB, 3 * GiB, 37.0, 180.5)
    assert body["devices"]["gpu0"]["total"] == 24 * GiB  # the budgets' view shares the sample

    got = await samples(proxy)
    key = (("gpu", "gpu0"), ("name", "Fake GPU"))
    assert got[("swapproxy_gpu_memory_total_bytes", key)] == 24 * GiB
    assert got[("swapproxy_gpu_memory_used_bytes", key)] == 3 * GiB
    assert got[("swapproxy_gpu_utilization_ratio", key)] == 0.37
    assert got[("swapproxy_gpu_temperature_celsius", key)] == 61.0
    assert got[("swapproxy_gpu_power_watts", key)] == 180.5
    assert got[("swapproxy_model_gpu_memory_bytes", (("gpu", "gpu0"), ("model", "a")))] == 2 * GiB

    assert (await proxy.chat("b"))[0] == 200  # a swapped out: what it held goes with it

    async def only_b_holds_any() -> bool:
        names = {dict(labels)["model"] for (name, labels) in await samples(proxy)
                 if name == "swapproxy_model_gpu_memory_bytes"}
        return names == {"b"}

    await wait_until(only_b_holds_any, 10, "the stopped model's GPU memory to leave /metrics")


async def test_without_a_gpu_the_gpu_parts_are_absent(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a")}), gpus=NoGpu())
    assert (await proxy.chat("a"))[0] == 200
    body = await details(proxy)
    assert "gpus" not in body and "gpu_memory" not in body["details"]["a"]
    assert not any(name.startswith("swapproxy_gpu_") or name == "swapproxy_model_gpu_memory_bytes"
                   for name, _ in await samples(proxy))


class _NvmlError(Exception):
    pass


def fake_pynvml(*, power_fails: bool = False) -> Any:
    """A stand-in for the ``pynvml`` module, with the calls and shapes of nvidia-ml-py."""
    handles = ["h0"]
    procs = {"h0": [SimpleNamespace(pid=11, usedGpuMemory=3 * GiB), SimpleNamespace(pid=12, usedGpuMemory=None)]}

    def power(handle: str) -> int:
        if power_fails:
            raise _NvmlError("not supported")
        return 215_250  # milliwatts

    return SimpleNamespace(
        NVMLError=_NvmlError, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: len(handles),
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * GiB, used=5 * GiB, free=75 * GiB),
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetUUID=lambda h: "GPU-1234",
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=55, memory=20),
        nvmlDeviceGetTemperature=lambda h, sensor: 48,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetComputeRunningProcesses=lambda h: list(procs[h]),
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [SimpleNamespace(pid=11, usedGpuMemory=GiB)],
    )


def test_the_nvml_reader_converts_units_and_tolerates_missing_readings() -> None:
    [gpu] = NvmlProvider(fake_pynvml()).devices()
    assert (gpu.device, gpu.name, gpu.uuid, gpu.total, gpu.used) == ("gpu0", "NVIDIA H200", "GPU-1234", 80 * GiB,
                                                                      5 * GiB)
    assert (gpu.utilization, gpu.memory_utilization, gpu.temperature, gpu.power, gpu.power_limit) == (
        55.0, 20.0, 48.0, 215.25, 700.0)
    [quiet] = NvmlProvider(fake_pynvml(power_fails=True)).devices()
    assert quiet.power is None and quiet.temperature == 48.0
    # compute and graphics contexts of one process add up; a process NVML cannot size is left out
    assert NvmlProvider(fake_pynvml()).process_memory([11, 12, 13]) == {11: {"gpu0": 4 * GiB}}


def test_the_real_nvml_library_on_this_machine() -> None:
    """With a driver (a GPU machine) the real reader sees devices; without, there is no GPU — never an error."""
    provider = gpu_provider()
    if isinstance(provider, NvmlProvider):
        devices = provider.devices()
        assert devices and all(d.total > 0 and d.used <= d.total for d in devices)
    else:
        assert isinstance(provider, NoGpu) and provider.devices() == []
