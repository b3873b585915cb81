"""swapproxy's benchmarks and soak, sharing one client, process handling, meters and report.

What each one measures, and how to run it (from the checkout's root; each
``--help`` prints its full description)::

    python scripts/bench.py [--quick] [--write-docs] [--only 1,4] [--no-nginx]
        perf.py: the whole performance picture in one run, direct vs nginx vs swapproxy:
        latency at 1 connection and open loop, max req/s with CPU per request, SSE
        lateness and events/s, many open streams, swap-ready overhead, RSS.
        --write-docs writes docs/PERFORMANCE.md.
    python scripts/bench_proxy.py [--quick]
        proxy.py: added latency, max req/s and SSE per-event delay, direct vs through
        swapproxy, with CONTROL rows (an L4 relay, a bare aiohttp forwarder).
    python scripts/bench_swap.py [--rounds 5]
        swap.py: swap time with the real llama-server (scripts/install_llama.py):
        swapproxy vs llama-server's router mode vs a bare start.
    python scripts/bench_readiness.py [--starts 20] [--delay 0.3]
        readiness.py: how soon after an upstream turns healthy swapproxy notices,
        against llama-swap's probing schedule.
    python scripts/bench_peers.py [--requests 2000] [--scrapes 2000] [--json FILE]
        peers.py: the latency a peer hop adds (client → swapproxy → its peer swapproxy → model,
        against the peer directly), p50/p99 and ratio; the CPU of one /metrics scrape with ten
        models running.
    python scripts/soak.py [--quick | --requests N] [--json FILE]
        soak.py: many mixed requests over three swapping models; every request must
        end 200 or an explicit 429/503, none may hang, RSS must stay flat.

``python -m scripts.bench.<module>`` runs the same. The shared parts:

* ports.py: free loopback ports, outside the test suite's range;
* procs.py: start/stop swapproxy (always through ``python -m swapproxy``), the fake
  llama-server (tests/fake_llama_server.py, run as a file), nginx; wait for /health;
* servers.py: the canned upstream, the L4 relay and the bare aiohttp forwarder,
  each run as its own process;
* client.py: aiohttp helpers, open/closed load loops, SSE readers, a raw HTTP/1.1 client;
* meters.py: percentiles, SSE lateness, CPU and RSS of processes;
* report.py: tables, ms/ratio cells, verdicts, the docs/PERFORMANCE.md writer.
"""
