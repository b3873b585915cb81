"""Read llama-swap's ``config.yaml`` unchanged and turn it into frozen, resolved objects.

The pipeline, in the order :func:`parse_config` runs it (stages 1-4 in :mod:`.loader`):

1. YAML is composed into nodes first, so every key path (``models.llama.ttl``) has a line
   number; then the same nodes are constructed into plain Python data.
2. Keys that change routing but that swapproxy does not implement yet are rejected, one
   problem each (none today); keys that only tune llama-swap's own UI or log format are
   accepted with a one-line notice.
3. ``${env.VAR}`` is substituted in every string value.
4. The raw schema (:mod:`.schema`: pydantic models whose field names are the camelCase keys
   users write) checks types and unknown keys; a typo gets a "did you mean" suggestion
   (:mod:`.validate` turns pydantic's errors into problems).
5. Resolution (:mod:`.resolve`). Per model (:mod:`.resolve_models`): macros (:mod:`.macros`;
   global, then the model's own; a macro may use those defined before it), ``${MODEL_ID}``,
   ``${PORT}`` (assigned from ``startPort`` upward in config order), ``cmd`` split into argv,
   defaults applied; each ``filters.setParamsByID`` name becomes an alias. Then groups
   (:mod:`.resolve_groups`), peers (:mod:`.resolve_peers`: their ``peer/model`` names must be
   unambiguous and no local name), selectors (:mod:`.resolve_selectors`), profiles
   (:mod:`.resolve_profiles`), ``upstream.ignorePaths`` (:mod:`.resolve_upstream`), aliases,
   ``preload`` and ``defaultModel`` are cross-checked. The result is the frozen types of
   :mod:`.model`.

Nothing stops at the first mistake: every problem is collected with ``file:line: key.path:``
(:mod:`.problems` holds the line index) and raised together as one :class:`ConfigError`.
:func:`json_schema` (from :mod:`.schema`) exposes the raw schema.

The modules import one another in one direction only: ``model`` and ``problems`` import
nothing of the package; ``schema``, ``validate`` and ``macros`` build on them; the
``resolve_<section>`` modules on those; ``resolve`` on the sections; ``loader`` on
``resolve``; this ``__init__`` only re-exports. A new top-level section gets its own
``resolve_<section>.py``, called from :mod:`.resolve`. Apart from the pipeline, :mod:`.edit`
changes one model entry in a file's *text* (ruamel.yaml round trip, everything else kept as
written) for the API and the UI; it imports nothing of the package, and what it produces is
validated by :func:`load_config` like any file (its ``texts`` argument).

Where swapproxy deliberately differs from llama-swap: unknown keys are errors (llama-swap
ignores them); ``${PORT}`` follows config order (llama-swap sorts the ids); the default proxy
is ``http://127.0.0.1:${PORT}`` (not ``localhost``, which may resolve to ::1 first);
``healthCheckTimeout`` is not raised to 15; group members, ``preload`` and ``defaultModel``
must name real models; macros are expanded in ``models`` only (not in ``selectors`` or
``profiles``); and a model with neither ``proxy`` nor ``${PORT}`` whose cmd names
exactly one ``--port N`` / ``--listen-port N`` is proxied there with a notice (llama-swap
refuses it, yet its own docker example configs contain such models).
"""

from __future__ import annotations

from .loader import load_config, parse_config
from .model import (COMFYUI_MODEL, DEFAULT_GROUP, Config, FiltersConfig, GroupConfig, LogLevel, LogToStdout,
                    ModelConfig, PeerConfig, PeerRoute, ProfileConfig, SelectorConfig)
from .problems import ConfigError, Problem
from .schema import json_schema

__all__ = ["COMFYUI_MODEL", "DEFAULT_GROUP", "Config", "ConfigError", "FiltersConfig", "GroupConfig", "LogLevel",
           "LogToStdout", "ModelConfig", "PeerConfig", "PeerRoute", "ProfileConfig", "Problem", "SelectorConfig",
           "json_schema", "load_config", "parse_config"]
