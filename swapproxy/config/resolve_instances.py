"""Resolution of the ``instances`` section (swapproxy): models managed at runtime.

``llamaServer`` is a command line (split without a shell, as ``cmd`` is): the llama-server a
model created through ``/api/v1/instances`` runs, flags appended, and the one
``/api/v1/server/help|version|devices`` asks. ``file`` names, with ``--config-dir``, the file
in that directory created models are written to: a plain ``*.yaml``/``*.yml`` name, never a
path. ``onReadOnly`` says what a change does when the config file cannot be written;
``edits: false`` turns changes through the API and the UI off.
"""

from __future__ import annotations

from .model import InstancesConfig
from .problems import _Report
from .resolve_models import _argv
from .schema import RawConfig

__all__ = ["_resolve_instances"]


def _resolve_instances(report: _Report, raw: RawConfig) -> InstancesConfig:
    section = raw.instances
    llama_server = None
    if section.llamaServer is not None:
        llama_server = _argv(report, section.llamaServer, ("instances", "llamaServer")) or None
    name = section.file
    if name is not None and (not name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name
                             or name.startswith(".")):
        report.problem(("instances", "file"), f"must be a file name in the --config-dir directory ending in "
                                              f".yaml or .yml (got {name!r})")
        name = None
    return InstancesConfig(llama_server=llama_server, file=name, on_read_only=section.onReadOnly, edits=section.edits)
