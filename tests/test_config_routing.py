"""Config: the router (groups or llama-swap's matrix), the scheduler's settings, memory budgets and footprints."""

from __future__ import annotations

import textwrap

import pytest

from swapproxy.config import DEFAULT_GROUP, Config, ConfigError, Problem, parse_config

MODELS = """\
models:
  a: {cmd: "s --port ${PORT}", aliases: [alpha]}
  b: {cmd: "s --port ${PORT}"}
  c: {cmd: "s --port ${PORT}"}
"""


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), file="r.yaml", environ={})


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def test_routing_router_use_matrix_compiles_the_matrix() -> None:
    config = parse(MODELS + """\
routing:
  router:
    use: matrix
    settings:
      groups: {g: {members: [a, b]}}
      matrix:
        vars: {x: a}
        evict_costs: {b: 5}
        sets:
          pair: "x & b"
          solo: c
""")
    assert config.router == "matrix" and config.matrix is not None
    assert config.matrix.solve("a", ["b", "c"]).evict == ("c",)
    assert [g.name for g in config.groups] == [DEFAULT_GROUP]  # groups are not used with a matrix
    assert any("r.yaml:9: routing.router.settings.groups: ignored" in n for n in config.notices)


def test_the_older_top_level_matrix_spelling_loads() -> None:
    config = parse(MODELS + "matrix: {sets: {all: 'a & b & c'}}\n")
    assert config.router == "matrix" and config.matrix is not None
    assert config.matrix.solve("c", ["a", "b"]).evict == ()


def test_a_matrix_under_the_group_router_is_ignored_with_a_notice() -> None:
    config = parse(MODELS + """\
routing:
  router:
    settings:
      matrix: {sets: {s: "nope & nothing"}}
""")
    assert config.router == "group" and config.matrix is None
    assert any("routing.router.settings.matrix: ignored" in n for n in config.notices)


def test_groups_and_a_matrix_together_are_one_problem_naming_both() -> None:
    found = problems(MODELS + "groups: {g: {members: [a]}}\nmatrix: {sets: {s: a}}\n")
    assert [(p.line, p.key_path) for p in found] == [(6, "matrix")]
    assert "both 'groups' and 'matrix'" in found[0].message
    found = problems(MODELS + "routing: {router: {use: group}}\nmatrix: {sets: {s: a}}\n")
    assert "'routing.router'" in found[0].message and found[0].key_path == "matrix"
    found = problems(MODELS + "groups: {g: {members: [a]}}\nrouting: {router: {use: matrix, settings: "
                              "{matrix: {sets: {s: a}}}}}\n")
    assert [p.key_path for p in found] == ["groups"] and "matrix" in found[0].message


def test_matrix_mistakes_carry_file_line_and_key() -> None:
    found = problems(MODELS + """\
routing:
  router:
    use: matrix
    settings:
      matrix:
        sets:
          s: "a & ghost"
""")
    assert [(p.line, p.key_path) for p in found] == [(9, "routing.router.settings.matrix")]
    assert found[0].message == "matrix: set 's': 'ghost' is neither a var nor a model id"
    found = problems(MODELS + "matrix: {vars: {x: a}}\n")
    assert found[0].key_path == "matrix.sets" and found[0].message == "required key is missing"


def test_scheduler_settings_priorities_by_id_or_alias_and_the_strict_baseline() -> None:
    config = parse(MODELS + """\
routing:
  scheduler:
    use: strict
    settings:
      fifo:
        priority: {alpha: 10, b: -1}
        maxWait: 1.5
""")
    assert config.scheduler.use == "strict" and config.scheduler.max_wait == 1.5
    assert config.scheduler.priority == {"a": 10, "b": -1}
    defaults = parse(MODELS).scheduler
    assert (defaults.use, dict(defaults.priority), defaults.max_wait) == ("fifo", {}, 2.0)
    found = problems(MODELS + "routing: {scheduler: {settings: {fifo: {priority: {ghost: 1}}}}}\n")
    assert (found[0].key_path, found[0].message) == ("routing.scheduler.settings.fifo.priority.ghost",
                                                      "'ghost' is not a model id or alias")
    found = problems(MODELS + "routing: {scheduler: {use: lifo}}\n")
    assert found[0].key_path == "routing.scheduler.use"


def test_memory_budgets_and_footprints() -> None:
    config = parse("""\
memory:
  devices: {gpu0: 24GiB, host: 64 GB}
  reserve: 512MiB
models:
  a: {cmd: "s --port ${PORT}", memory: 6GiB}
  b: {cmd: "s --port ${PORT}", memory: {gpu0: 2GiB, host: 1000000}}
  c: {cmd: "s --port ${PORT}"}
""")
    assert config.memory.budgets == {"gpu0": 24 * 2**30, "host": 64 * 10**9}
    assert config.memory.reserve == 512 * 2**20 and config.memory.learn is True
    assert config.models["a"].memory == {"main": 6 * 2**30}
    assert config.models["b"].memory == {"gpu0": 2 * 2**30, "host": 1000000}
    assert config.models["c"].memory is None
    found = problems("""\
memory: {devices: {cuda0: 1GiB, gpu1: lots}}
models:
  a: {cmd: "s --port ${PORT}", memory: -1}
""")
    assert [(p.line, p.key_path) for p in found] == [(1, "memory.devices.cuda0"), (1, "memory.devices.gpu1"),
                                                     (3, "models.a.memory")]
    assert "use gpu0, gpu1, ... or host" in found[0].message and "not a size" in found[1].message


def test_share_default_group_lets_models_in_no_group_run_together() -> None:
    shared = parse(MODELS + "memory: {shareDefaultGroup: true}\n")
    group = shared.group_of("a")
    assert group.name == DEFAULT_GROUP and not group.swap and not group.exclusive
    assert parse(MODELS).group_of("a").swap


def test_spillover_targets_under_the_matrix_must_share_one_combination() -> None:
    matrix = "routing: {router: {use: matrix, settings: {matrix: {sets: {pair: 'a & b', solo: c}}}}}\n"
    config = parse(MODELS + matrix + "selectors: {pool: {strategy: spillover, targets: [a, b]}}\n")
    assert config.selectors["pool"].targets == ("a", "b")
    found = problems(MODELS + matrix + "selectors: {pool: {strategy: spillover, targets: [a, c]}}\n")
    assert [p.key_path for p in found] == ["selectors.pool.targets"]
    assert "one combination of one matrix set" in found[0].message
