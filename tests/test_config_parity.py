"""Config keys from llama-swap's current release: setParamsByID, selectors, profiles, upstream, compat, tags."""

from __future__ import annotations

import textwrap

import pytest

from swapproxy.config import COMFYUI_MODEL, Config, ConfigError, Problem, parse_config


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), file="t.yaml", environ={})


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [(p.line, p.key_path, p.message) for p in info.value.problems]


def test_set_params_by_id_names_become_aliases_after_the_explicit_ones() -> None:
    config = parse("""\
        models:
          gpt:
            cmd: "s --port ${PORT}"
            aliases: [gpt-4o-mini, "gpt:low"]
            filters:
              setParams: {temperature: 0.7}
              setParamsByID:
                "${MODEL_ID}": {reasoning_effort: medium}
                "${MODEL_ID}:high": {reasoning_effort: high, model: nope}
                "gpt:low": {reasoning_effort: low}
        """)
    gpt = config.models["gpt"]
    assert gpt.aliases == ("gpt-4o-mini", "gpt:low", "gpt:high")  # no duplicate, not the model's own id
    assert config.resolve("gpt:high") == config.resolve("gpt:low") == "gpt"
    assert gpt.filters.set_params_by_id == {"gpt": {"reasoning_effort": "medium"},
                                            "gpt:high": {"reasoning_effort": "high"},
                                            "gpt:low": {"reasoning_effort": "low"}}
    assert [n.split(": ", 2)[1:] for n in config.notices] == [
        ["models.gpt.filters.setParamsByID.${MODEL_ID}:high.model",
         "removed; the model parameter is never overridden (use useModelName)"]]


def test_set_params_by_id_clashes_are_reported_where_written() -> None:
    found = problems("""\
        macros: {v: x}
        models:
          a:
            cmd: "s --port ${PORT}"
            aliases: [shared]
          b:
            cmd: "s --port ${PORT}"
            filters:
              setParamsByID:
                a: {k: 1}
                shared: {k: 2}
                "${v}": {k: 3}
                x: {k: 4}
                "${nope}": {k: 5}
        """)
    assert found == [
        (10, "models.b.filters.setParamsByID.a", "alias 'a' is also a model id"),
        (11, "models.b.filters.setParamsByID.shared", "alias 'shared' is already used by model 'a'"),
        (13, "models.b.filters.setParamsByID.x", "names '${v}' and 'x' both resolve to 'x'"),
        (14, "models.b.filters.setParamsByID.${nope}", "unknown macro '${nope}'")]


def test_tags_compat_and_the_comfyui_model() -> None:
    config = parse("""\
        models:
          code:
            cmd: "s --port ${PORT}"
            aliases: [tinyllama-2, fim, code]
            tags: "chat, fim,small"
          comfyui_auto:
            cmd: "comfy --port ${PORT}"
          tools:
            cmd: "t --port ${PORT}"
            tags: [one, two]
            compat: {ignoreWebsockets: true}
        """)
    code = config.models["code"]
    assert code.tags == ("chat", "fim", "small") and code.aliases == ("tinyllama-2", "fim", "code")
    assert config.resolve("code") == "code" and not code.ignore_websockets
    comfy = config.models[COMFYUI_MODEL]  # llama-swap's rules for its ComfyUI model
    assert comfy.ignore_websockets and comfy.concurrency_limit == 50
    assert config.models["tools"].tags == ("one", "two") and config.models["tools"].ignore_websockets


def test_selectors_are_checked_as_llama_swap_checks_them() -> None:
    found = problems("""\
        models:
          a: {cmd: "s --port ${PORT}", aliases: [alias-a]}
          b: {cmd: "s --port ${PORT}"}
        selectors:
          a: {strategy: pin, targets: [b]}
          alias-a: {strategy: pin, targets: [b]}
          s1: {strategy: warm, targets: [a, s3, ghost]}
          s2: {strategy: fastest, targets: [a]}
          s3: {strategy: pin, targets: []}
          s4: {strategy: spillover, targets: [a, alias-a]}
          s5: {strategy: spillover, targets: [a], settings: {spillover: 0}}
          s6: {strategy: spillover, targets: [a, b]}
          s7: {targets: [a]}
        """)
    assert found == [
        (5, "selectors.a", "selector id 'a' is also a model id"),
        (6, "selectors.alias-a", "selector id 'alias-a' is also an alias of model 'a'"),
        (7, "selectors.s1.targets[1]", "'s3' is a selector; a selector's targets must be models"),
        (7, "selectors.s1.targets[2]", "'ghost' is not a model id or alias"),
        (8, "selectors.s2.strategy", "Input should be 'pin', 'warm' or 'spillover' (got 'fastest')"),
        (9, "selectors.s3.targets", "a selector needs at least one target"),
        (10, "selectors.s4.targets", "targets name model 'a' more than once"),
        (11, "selectors.s5.settings.spillover", "Input should be greater than or equal to 1 (got 0)"),
        # no groups: one model runs at a time, so a and b cannot take requests side by side
        (12, "selectors.s6.targets", "group '(default)' has swap: true, so its members replace each other; "
                                     "spillover targets must share one group with swap: false"),
        (13, "selectors.s7.strategy", "required key is missing")]


def test_spillover_targets_must_share_one_group_without_swap() -> None:
    models = '{a: {cmd: "s --port ${PORT}"}, b: {cmd: "s --port ${PORT}"}, c: {cmd: "s --port ${PORT}"}}'
    config = parse(f"""\
        models: {models}
        groups:
          pool: {{swap: false, members: [a, b]}}
        selectors:
          fill: {{strategy: spillover, targets: [a, b], settings: {{spillover: 3}}}}
          mixed: {{strategy: warm, targets: [c, a]}}
        """)
    assert config.selectors["fill"].target_ids == ("a", "b") and config.selectors["fill"].spillover == 3
    assert config.selectors["mixed"].strategy == "warm"  # warm and pin have no coexistence rule
    found = problems(f"""\
        models: {models}
        groups:
          pool: {{swap: false, members: [a, b]}}
        selectors:
          split: {{strategy: spillover, targets: [a, c]}}
        """)
    assert found == [(5, "selectors.split.targets", "'a' and 'c' are in different groups; spillover targets "
                                                    "must share one group with swap: false")]


def test_profiles_are_checked_and_null_pins_disable_a_name() -> None:
    config = parse("""\
        models:
          big: {cmd: "s --port ${PORT}", aliases: [large]}
        selectors:
          any: {strategy: warm, targets: [big]}
        profiles:
          coding:
            description: Coding models
            pins: {llm-code: big, llm-any: any, big: large, image-gen: ~, disabled: ""}
        """)
    coding = config.profiles["coding"]
    assert coding.description == "Coding models"
    assert coding.pins == {"llm-code": "big", "llm-any": "any", "big": "large", "image-gen": "", "disabled": ""}
    found = problems("""\
        models:
          big: {cmd: "s --port ${PORT}"}
        profiles:
          old: [big]
          empty: {pins: {}}
          bad: {pins: {x: ghost}}
          nopins: {description: d}
        """)
    assert found == [
        (4, "profiles.old", "a profile must be a mapping with description and pins; the legacy list syntax "
                            "is no longer supported (got ['big'])"),
        (5, "profiles.empty.pins", "a profile needs at least one pin"),
        (6, "profiles.bad.pins.x", "'ghost' is not a model id, alias or selector"),
        (7, "profiles.nopins.pins", "required key is missing")]


def test_upstream_ignore_paths_default_and_invalid_patterns() -> None:
    assert [p.pattern for p in parse('models: {m: {cmd: "s --port ${PORT}"}}').upstream_ignore_paths] == [
        r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$"]
    empty = parse('upstream: {ignorePaths: []}\nmodels: {m: {cmd: "s --port ${PORT}"}}')
    assert len(empty.upstream_ignore_paths) == 1  # [] means the default, as in llama-swap
    found = problems('upstream: {ignorePaths: ["^/ok$", "(unclosed"]}\nmodels: {m: {cmd: "s --port ${PORT}"}}')
    assert found == [(1, "upstream.ignorePaths[1]",
                      "invalid regular expression '(unclosed': missing ), unterminated subpattern at position 0")]


def test_preload_and_group_members_naming_a_selector_say_so() -> None:
    found = problems("""\
        models:
          a: {cmd: "s --port ${PORT}"}
        selectors:
          pool: {strategy: pin, targets: [a]}
        hooks: {on_startup: {preload: [pool]}}
        groups:
          g: {members: [pool]}
        """)
    assert [message for _, _, message in found] == [
        "'pool' is not a model id or alias (it is a selector; name a model)",
        "'pool' is not a model id defined in models (it is a selector; name a model)"]


def test_problem_type_is_unchanged() -> None:
    with pytest.raises(ConfigError) as info:
        parse('profiles: {p: {pins: {x: y}}}\nmodels: {m: {cmd: "s --port ${PORT}"}}')
    assert all(isinstance(p, Problem) for p in info.value.problems)
