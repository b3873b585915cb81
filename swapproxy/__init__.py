"""swapproxy: a model-swap reverse proxy for llama-server and OpenAI-compatible upstreams.

Architecture, in the order a request meets it::

    client ─▶ app.py       routes, middlewares (auth, error envelope), resources
              handlers.py  the route handlers: inference, model list, management
              routing.py   which model does this request name? (body / form / ?model= / path)
              swap.py      Swapper: evictions by group, FIFO queue, drain, TTL, limits
              process.py   ManagedProcess: spawn, health-probe, watch exit, stop
              proxy.py     forward(): stream bytes both ways, no buffering

Configuration is read by config/ (llama-swap's format), process states are
in states.py, errors and their OpenAI envelope in errors.py.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
