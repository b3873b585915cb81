"""Memory estimate against the real llama-server: the GGUF estimate beside what the process really holds.

For each set of options, swapproxy's estimate (``swapproxy.estimate`` on the
facts ``swapproxy.gguf_facts`` reads from the GGUF) is printed beside what a
real llama-server with the same options reports it allocated (its own memory
breakdown log line: model + context + compute, host) and its resident memory
(RSS) after one completion — so the KV pages a short conversation never
touched are not resident yet, and RSS sits below the allocation at large
contexts. Needs the llama-server and gemma-3-270m that ``scripts/install_llama.py``
caches in ~/.cache/swapproxy.

    python scripts/bench_footprint.py
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from swapproxy.estimate import footprint, parse_options
from swapproxy.gguf_facts import read_facts

from .ports import free_port

__all__ = ["main"]

CACHE = Path.home() / ".cache" / "swapproxy"
SERVER = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"
CASES = ["-c 512", "-c 2048", "-c 8192", "-c 32768", "-c 8192 -np 1", "-c 8192 --swa-full", "-c 8192 -ctk q8_0 -ctv q8_0"]
MiB = 1 << 20
_BREAKDOWN = re.compile(r"memory_breakdown_print: \|\s+- Host\s+\|\s+(\d+) =")


def measure(options: list[str]) -> tuple[float, float | None]:
    """(RSS after one short completion, llama-server's own host total from its log), in MiB."""
    port = free_port()
    argv = [str(SERVER), "--host", "127.0.0.1", "--port", str(port), "-m", str(MODEL), "-t", "2", "-v", *options]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"prompt": "The quick brown fox jumps over the lazy dog. " * 20, "n_predict": 8})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            resp.read()
        rss = psutil.Process(proc.pid).memory_info().rss / MiB
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    reader.join(timeout=5)
    totals = [int(m.group(1)) for line in lines if (m := _BREAKDOWN.search(line))]
    return rss, (float(totals[0]) if totals else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=";".join(CASES), help="';'-separated llama-server options to try")
    args = p.parse_args(argv)
    missing = [str(x) for x in (SERVER, MODEL) if not x.exists()]
    if missing:
        print(f"missing {', '.join(missing)}: run python3 scripts/install_llama.py first")
        return 2
    facts = read_facts([str(MODEL)])[str(MODEL)]
    if isinstance(facts, str):
        print(f"cannot read {MODEL}: {facts}")
        return 2
    rows = [["llama-server options", "estimate MiB", "its own log MiB", "RSS MiB", "estimate / RSS"],
            ["---"] * 5]
    for case in args.cases.split(";"):
        options = case.split()
        estimate = footprint(facts, parse_options(["-m", str(MODEL), *options]), gpu=False)["host"] / MiB
        rss, reported = measure(options)
        rows.append([case, f"{estimate:.0f}", f"{reported:.0f} + process" if reported else "-", f"{rss:.0f}",
                     f"{estimate / rss:.2f}"])
        print(f"  {case}: estimate {estimate:.0f} MiB, RSS {rss:.0f} MiB", flush=True)
    print()
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nmodel {MODEL.name}; weights {facts['weights'] / MiB:.0f} MiB; RSS read after one completion")
    return 0
