"""The HTTP layer: routes, middlewares, forwarding. Nothing outside this package imports it but the server.

Modules, in the order a request meets them: :mod:`.app` (``make_app``, resources),
:mod:`.middleware` (metrics, error envelope, auth), then the routes —
:mod:`.inference` (OpenAI and native llama-server routes, the model list),
:mod:`.upstream` (the ``/upstream/`` family), :mod:`.management` and :mod:`.streams` —
which lease a model and hand the request to :mod:`.forward` and :mod:`.proxy`.
:mod:`.runtime` is the leaf every route reads its state from.
"""
