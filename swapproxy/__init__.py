"""swapproxy: a model-swap reverse proxy for llama-server and OpenAI-compatible upstreams.

One request, in the order it meets the files::

    client ─▶ web/app.py         the app: middlewares, routes, resources (one cleanup_ctx each)
              web/middleware.py  metrics, the OpenAI error envelope, API keys
              web/browser.py     request target, Host, OPTIONS/CORS; cross-site refused by route kind
              web/inference.py   an OpenAI or native route; routing.py finds the model it names
              web/naming.py      ... through the active profile's pins, a selector (selectors.py
                                 picks a target from the models' states) and aliases
              web/peer.py        ... or a peer's model: forwarded to the peer (no lease, no swap;
                                 peers.py probes the peers, so one that is down is a 503 at
                                 once), a selector failing over to its next target
              web/forward.py     lease the model, forward, record metrics, release; the request
                                 is listed in flight (inflight.py) where an operator may cut it
              scheduler.py       acquire(): make the model ready (below), count the request in flight
              web/proxy.py       forward(): stream bytes both ways, no buffering

One swap, when the model a request names is not running::

    scheduler.py   under the FIFO lock: ask the policy, mark the victims, reserve the model
    policy.py      evictions(): which running models must stop (groups) — a pure function
    scheduler.py   outside the lock: wait for the victims' requests to finish, stop them
    process.py     ManagedProcess: stop (cmdStop or SIGTERM → SIGKILL), spawn, probe /health
    processes.py   ProcessHub: every state change reaches its listeners — failures.py
                   (back-off after a failed start, circuit breaker, persistent restarts),
                   metrics.py, the event bus (status.py's ModelStatus), systemd's STATUS
                   line, web/upstream_props.py (asks a server that is ready for its /props)

One change to the config made at runtime (llamactl's API, the UI's form or editor)::

    web/instances.py   POST/PUT/DELETE /api/v1/instances/{name}; llamactl.py turns its options
                       into a model entry (llama-server flags); web/configview.py: the whole file
    configstore.py     under the reload lock: read the files (configfiles.py: version, atomic write),
                       change one file's text (config/edit.py keeps the rest as written), validate
                       it with the loader as a reload would, write it, then apply it:
    reload.py          Reloader.apply → Scheduler.apply_config: unchanged models keep running

Around them: config/ reads llama-swap's format into frozen types; states.py is
the process state table; metrics.py (with exposition.py and tokens.py) counts
and writes /metrics, fleet.py the part an endpoint picker routes a fleet of
hosts by, timeline.py the recent loads and stops the UI draws; errors.py the error tree and its envelope; redact.py hides secrets in
shown command lines, URLs and log lines; reload.py and config_diff.py apply a
changed config as a diff; web/runtime.py holds what the running app shares;
web/management.py, web/controls.py, web/streams.py, web/catalogue.py and
web/upstream.py (with web/websocket.py) the management, profile, event,
model-list (with describe.py) and /upstream routes; web/loading.py what a
streamed chat sees while its model loads (sendLoadingState); llamabin.py the
configured llama-server binary (/api/v1/server/...); server.py, listen.py and
cli.py start it all.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
