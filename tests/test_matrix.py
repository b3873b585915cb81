"""llama-swap's matrix: the expression language and the least-cost solver. Pure functions, no processes."""

from __future__ import annotations

import pytest

from swapproxy.matrix import MatrixError, compile_matrix

# The sets of llama-swap's example config, with its vars and evict costs (models as it names them).
EXAMPLE_MODELS = ("gemma-model", "qwen-model", "mistral-model", "voxtral-model", "reranker-model",
                  "stable-diffusion", "llama-70B")
EXAMPLE_VARS = {"g": "gemma-model", "q": "qwen-model", "m": "mistral-model", "v": "voxtral-model",
                "e": "reranker-model"}
EXAMPLE_COSTS = {"v": 50, "llama-70B": 30}
EXAMPLE_SETS = {
    "standard": "(g | qwen-model | m) & v",
    "with_rerank": "(g | q) & v & e",
    "creative": "(g | q) & stable-diffusion",
    "full": "llama-70B",
}


def example():  # type: ignore[no-untyped-def]
    return compile_matrix(EXAMPLE_SETS, EXAMPLE_VARS, EXAMPLE_COSTS, EXAMPLE_MODELS)


def test_a_running_target_stops_nothing() -> None:
    assert example().solve("gemma-model", ["gemma-model", "voxtral-model"]).evict == ()


def test_a_model_that_fits_beside_the_running_ones_stops_nothing() -> None:
    solution = example().solve("reranker-model", ["gemma-model", "voxtral-model"])
    assert (solution.evict, solution.set_name, solution.cost) == ((), "with_rerank", 0)


def test_the_least_costly_combination_wins() -> None:
    m = example()
    # qwen beside voxtral costs mistral (1); nothing cheaper holds qwen
    assert m.solve("qwen-model", ["mistral-model", "voxtral-model"]).evict == ("mistral-model",)
    # image generation needs an LLM beside it: the one running stays, tts and reranker go (50 + 1)
    solution = m.solve("stable-diffusion", ["gemma-model", "voxtral-model", "reranker-model"])
    assert (solution.evict, solution.set_name, solution.cost) == (("voxtral-model", "reranker-model"), "creative", 51)


def test_evict_costs_steer_which_model_goes() -> None:
    m = compile_matrix({"s1": "a & b", "s2": "a & c"}, {}, {"b": 10}, ("a", "b", "c"))
    # a beside b keeps b (cost 10) and stops c (1)
    assert m.solve("a", ["b", "c"]).evict == ("c",)
    cheap = compile_matrix({"s1": "a & b", "s2": "a & c"}, {}, {"c": 10}, ("a", "b", "c"))
    assert cheap.solve("a", ["b", "c"]).evict == ("b",)


def test_a_tie_goes_to_the_first_set() -> None:
    m = compile_matrix({"first": "a & b", "second": "a & c"}, {}, {}, ("a", "b", "c"))
    solution = m.solve("a", ["b", "c"])
    assert (solution.evict, solution.set_name) == (("c",), "first")


def test_a_model_in_no_set_runs_alone_and_is_stopped_for_any_other() -> None:
    m = compile_matrix({"pair": "a & b"}, {}, {}, ("a", "b", "loner"))
    solution = m.solve("loner", ["a", "b"])
    assert (solution.evict, solution.set_name) == (("a", "b"), None)
    assert m.solve("a", ["loner"]).evict == ("loner",)


def test_the_big_model_runs_alone() -> None:
    m = example()
    assert m.solve("llama-70B", ["gemma-model", "voxtral-model"]).evict == ("gemma-model", "voxtral-model")
    assert m.solve("gemma-model", ["llama-70B"]).evict == ("llama-70B",)


def test_and_binds_tighter_than_or_and_references_inline_other_sets() -> None:
    m = compile_matrix({"llms": "a | b", "s": "+llms & c | d"}, {}, {}, ("a", "b", "c", "d"))
    assert m.solve("c", ["b"]).evict == ()  # (b & c) is allowed
    assert m.solve("d", ["b", "c"]).evict == ("b", "c")  # d alone
    assert m.models("s") == {"a", "b", "c", "d"} and m.order[0] == "llms"
    assert m.can_contain_all({"a", "c"}) and not m.can_contain_all({"a", "b"})


def test_a_var_shadows_a_model_id_and_names_models_with_slashes() -> None:
    m = compile_matrix({"s": "a & big"}, {"big": "org/big-model", "a": "b"}, {}, ("a", "b", "org/big-model"))
    assert m.models("s") == {"b", "org/big-model"}


def test_a_large_set_is_solved_without_expanding_its_cross_product() -> None:
    ids = [f"m{i}" for i in range(60)]
    groups = " & ".join("(" + " | ".join(ids[i:i + 6]) + ")" for i in range(0, 60, 6))  # 6**10 combinations
    m = compile_matrix({"big": groups}, {}, {}, ids)
    assert m.solve("m0", ["m1", "m6", "m12"]).evict == ("m1",)


@pytest.mark.parametrize("sets, variables, costs, message", [
    ({}, {}, {}, "at least one set"),
    ({"s": ""}, {}, {}, "empty"),
    ({"s": "a & nope"}, {}, {}, "'nope' is neither a var nor a model id"),
    ({"s": "a $ b"}, {}, {}, "unexpected character '$'"),
    ({"s": "+ a"}, {}, {}, "right after '+'"),
    ({"s": "(a | b"}, {}, {}, "never closed"),
    ({"s": "a b"}, {}, {}, "unexpected 'b' after the expression"),
    ({"s": "a &"}, {}, {}, "ends too early"),
    ({"s": "+other"}, {}, {}, "+other, which is not a set"),
    ({"s": "+t & a", "t": "+s"}, {}, {}, "refers to itself"),
    ({"s": "a"}, {"bad_key": "a"}, {}, "1 to 32 letters"),
    ({"s": "a"}, {"x": "ghost"}, {}, "'ghost', which is not a model id"),
    ({"s": "a"}, {}, {"a": 0}, "positive whole number"),
    ({"s": "a"}, {}, {"zz": 2}, "neither a var nor a model id"),
])
def test_mistakes_are_reported_with_the_set_and_the_reason(sets, variables, costs, message) -> None:
    with pytest.raises(MatrixError, match=None) as info:
        compile_matrix(sets, variables, costs, ("a", "b"))
    assert message in str(info.value)
