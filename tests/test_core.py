"""The shared types of ``adaptforge.core``: LoRA factors and deltas, "did you mean" and the name registry."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule, Registry, did_you_mean


def factors(rank: int, d_in: int, d_out: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> LoraModule:
    gen = torch.Generator().manual_seed(seed)
    return LoraModule(
        A=torch.randn(rank, d_in, generator=gen).to(dtype),
        B=torch.randn(d_out, rank, generator=gen).to(dtype),
        scale=0.5 + seed,
    )


# ----------------------------------------------------------------------------------------- LoraModule


def test_lora_module_reports_rank_and_dense_shape() -> None:
    m = factors(rank=3, d_in=7, d_out=5)
    assert m.rank == 3
    assert m.shape == (5, 7)
    assert m.dense().shape == (5, 7)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((3, 7), (5, 4)), ((7,), (5, 7)), ((3, 7), (5, 3, 1)), ((1, 3, 7), (5, 3))],
    ids=["rank-mismatch", "A-is-1d", "B-is-3d", "A-is-3d"],
)
def test_lora_module_refuses_factors_that_do_not_fit(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    with pytest.raises(AdaptforgeError, match="do not fit") as err:
        LoraModule(A=torch.zeros(a_shape), B=torch.zeros(b_shape), scale=1.0)
    assert str(tuple(a_shape)) in str(err.value) and str(tuple(b_shape)) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_is_scale_times_b_at_a_in_float32(dtype: torch.dtype) -> None:
    """dense() upcasts half-precision factors: the result is float32 and matches a float64 reference."""
    m = factors(rank=4, d_in=9, d_out=6, seed=1, dtype=dtype)
    expected = (m.B.double() @ m.A.double()) * m.scale
    dense = m.dense()
    assert dense.dtype == torch.float32
    torch.testing.assert_close(dense.double(), expected, rtol=1e-6, atol=1e-6)


def test_dense_of_half_factors_is_more_exact_than_a_half_matmul() -> None:
    """The upcast matters: a float16 product of the same factors is measurably further from the exact value."""
    gen = torch.Generator().manual_seed(3)
    m = LoraModule(A=torch.randn(16, 64, generator=gen).half(), B=torch.randn(64, 16, generator=gen).half(), scale=3.0)
    exact = (m.B.double() @ m.A.double()) * 3.0
    upcast_err = (m.dense().double() - exact).abs().max()
    half_err = ((m.B @ m.A).double() * 3.0 - exact).abs().max()
    assert upcast_err < half_err


# ------------------------------------------------------------------------------------------ LoraDelta


def make_delta() -> LoraDelta:
    return LoraDelta(
        {"z.proj": factors(2, 4, 3, seed=0), "a.proj": factors(5, 6, 8, seed=1), "m.proj": factors(1, 2, 2)}
    )


def test_delta_iterates_and_lists_targets_in_sorted_order() -> None:
    delta = make_delta()
    assert list(delta) == ["a.proj", "m.proj", "z.proj"]
    assert delta.targets == ["a.proj", "m.proj", "z.proj"]
    assert len(delta) == 3
    assert delta["a.proj"] is delta.modules["a.proj"]


def test_delta_ranks_and_parameter_count() -> None:
    delta = make_delta()
    assert delta.ranks == {"z.proj": 2, "a.proj": 5, "m.proj": 1}
    expected = sum(m.A.numel() + m.B.numel() for m in delta.modules.values())
    assert delta.num_parameters() == expected == 2 * (4 + 3) + 5 * (6 + 8) + 1 * (2 + 2)
    assert LoraDelta().num_parameters() == 0


def test_delta_dense_is_the_module_dense() -> None:
    delta = make_delta()
    torch.testing.assert_close(delta.dense("a.proj"), delta["a.proj"].dense(), rtol=0, atol=0)


def test_non_finite_is_none_when_everything_is_finite() -> None:
    assert make_delta().non_finite() is None
    assert LoraDelta().non_finite() is None


def test_non_finite_finds_nan_in_a() -> None:
    delta = make_delta()
    bad = delta["m.proj"]
    A = bad.A.clone()
    A[0, 1] = float("nan")
    delta.modules["m.proj"] = LoraModule(A=A, B=bad.B, scale=bad.scale)
    message = delta.non_finite()
    assert message is not None
    assert "'m.proj'" in message and "lora_A" in message and "1 NaN" in message


def test_non_finite_finds_inf_in_b() -> None:
    delta = make_delta()
    bad = delta["z.proj"]
    B = bad.B.clone()
    B[0, 0] = float("inf")
    B[2, 1] = float("-inf")
    delta.modules["z.proj"] = LoraModule(A=bad.A, B=B, scale=bad.scale)
    message = delta.non_finite()
    assert message is not None
    assert "'z.proj'" in message and "lora_B" in message and "2 NaN or infinite" in message


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_non_finite_finds_a_non_finite_scale(scale: float) -> None:
    delta = make_delta()
    ok = delta["a.proj"]
    delta.modules["a.proj"] = LoraModule(A=ok.A, B=ok.B, scale=scale)
    message = delta.non_finite()
    assert message is not None and "'a.proj'" in message and "scale" in message


def test_non_finite_refuses_integer_factors() -> None:
    delta = LoraDelta({"q": LoraModule(A=torch.ones(2, 3, dtype=torch.int64), B=torch.ones(4, 2), scale=1.0)})
    message = delta.non_finite()
    assert message is not None and "int64" in message and "lora_A" in message


# ---------------------------------------------------------------------------------------- did_you_mean


def test_did_you_mean_names_the_closest_known_word() -> None:
    assert (
        did_you_mean("task_arithmatic", ["ties", "task_arithmetic", "dare_ties"]) == " Did you mean 'task_arithmetic'?"
    )


def test_did_you_mean_is_empty_without_a_close_word() -> None:
    assert did_you_mean("zzzz", ["ties", "task_arithmetic"]) == ""
    assert did_you_mean("ties", []) == ""


def test_did_you_mean_accepts_a_non_string_word() -> None:
    assert did_you_mean(12, ["12x", "abc"]) == " Did you mean '12x'?"


# -------------------------------------------------------------------------------------------- Registry


class Base:
    pass


def make_class(name: object, base: type = Base, check: Exception | None = None) -> type:
    attrs: dict[str, object] = {"name": name}
    if check is not None:

        def check_contract(cls: type) -> None:
            raise check

        attrs["check_contract"] = classmethod(check_contract)
    return type(f"Item_{name}", (base,), attrs)


def test_register_uses_the_class_name_attribute_and_returns_the_class() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    cls = make_class("alpha")
    assert reg.register(cls) is cls
    assert reg.get("alpha") is cls
    assert "alpha" in reg
    assert reg.items() == {"alpha": cls}


def test_register_as_a_decorator() -> None:
    reg: Registry[type] = Registry("widget", base=Base)

    @reg.register
    class Gamma(Base):
        name = "gamma"

    assert reg.get("gamma") is Gamma


@pytest.mark.parametrize("name", [None, "", "Alpha", "ALPHA", 3])
def test_register_refuses_a_missing_empty_or_non_lowercase_name(name: object) -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    cls = make_class(name) if name is not None else type("NoName", (Base,), {})
    with pytest.raises(ValueError, match="lowercase, non-empty class attribute 'name'"):
        reg.register(cls)
    assert reg.names() == []


def test_register_refuses_a_class_not_subclassing_the_base() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    with pytest.raises(ValueError, match="'stray' must subclass Base"):
        reg.register(make_class("stray", base=object))
    assert "stray" not in reg


def test_register_refuses_an_instance_when_a_base_is_required() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    instance = make_class("inst")()
    with pytest.raises(ValueError, match="must subclass Base"):
        reg.register(instance)


def test_register_without_base_accepts_any_named_object() -> None:
    reg: Registry[object] = Registry("thing")
    cls = make_class("free", base=object)
    reg.register(cls)
    assert reg.get("free") is cls


def test_register_refuses_a_duplicate_name_and_keeps_the_first() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    first = reg.register(make_class("alpha"))
    with pytest.raises(ValueError, match="'alpha' is registered twice"):
        reg.register(make_class("alpha"))
    assert reg.get("alpha") is first


def test_register_calls_check_contract() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    calls: list[type] = []

    class Checked(Base):
        name = "checked"

        @classmethod
        def check_contract(cls) -> None:
            calls.append(cls)

    reg.register(Checked)
    assert calls == [Checked]


def test_a_class_whose_contract_check_raises_is_not_registered() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    with pytest.raises(ValueError, match="no paper link"):
        reg.register(make_class("broken", check=ValueError("no paper link")))
    assert "broken" not in reg
    assert reg.names() == []


def test_get_unknown_lists_known_names_and_suggests_the_closest() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    for name in ("linear", "ties", "dare"):
        reg.register(make_class(name))
    with pytest.raises(AdaptforgeError) as err:
        reg.get("tiess")
    message = str(err.value)
    assert "unknown widget 'tiess'" in message
    assert "known: dare, linear, ties." in message
    assert message.endswith("Did you mean 'ties'?")


def test_get_unknown_without_a_close_name_has_no_suggestion() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    reg.register(make_class("linear"))
    with pytest.raises(AdaptforgeError) as err:
        reg.get("qqqqqq")
    assert "Did you mean" not in str(err.value)


def test_get_with_an_unhashable_name_is_an_adaptforge_error() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    reg.register(make_class("linear"))
    with pytest.raises(AdaptforgeError, match="unknown widget"):
        reg.get(["linear"])  # type: ignore[arg-type]


def test_names_are_sorted_and_contains_matches_registration() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    for name in ("zeta", "alpha", "mu"):
        reg.register(make_class(name))
    assert reg.names() == ["alpha", "mu", "zeta"]
    assert "mu" in reg
    assert "nu" not in reg
    assert 3 not in reg


def test_items_is_a_copy() -> None:
    reg: Registry[type] = Registry("widget", base=Base)
    reg.register(make_class("alpha"))
    items = reg.items()
    items["beta"] = Base  # type: ignore[index]
    assert "beta" not in reg
    assert reg.names() == ["alpha"]


# ------------------------------------------------------------------ declared entries, loaded on first lookup


def _widget_modules(root: Path, decorate: bool = True) -> None:
    """A registry module declaring two widgets and the two modules that define them."""
    (root / "widget_registry.py").write_text(
        "from adaptforge.core import Registry\n"
        "REG = Registry('widget', entries={'alpha': 'widget_alpha:Alpha', 'beta': 'widget_beta:Beta'})\n"
    )
    for name in ("alpha", "beta"):
        head = "@REG.register\n" if decorate else ""
        (root / f"widget_{name}.py").write_text(
            f"from widget_registry import REG\n{head}class {name.title()}:\n    name = {name!r}\n"
        )


@pytest.fixture
def widget_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("widget_registry", "widget_alpha", "widget_beta"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("decorate", [True, False])
def test_declared_entries_are_named_without_import_and_loaded_on_first_lookup(widget_path, decorate) -> None:
    _widget_modules(widget_path, decorate=decorate)
    from widget_registry import REG

    assert REG.names() == ["alpha", "beta"] and "beta" in REG
    assert "widget_alpha" not in sys.modules and "widget_beta" not in sys.modules
    alpha = REG.get("alpha")
    assert alpha.__name__ == "Alpha" and "widget_alpha" in sys.modules and "widget_beta" not in sys.modules
    assert REG.get("alpha") is alpha
    assert list(REG.items()) == ["alpha", "beta"] and "widget_beta" in sys.modules


def test_a_registry_with_entries_refuses_an_undeclared_item(widget_path) -> None:
    _widget_modules(widget_path)
    from widget_registry import REG

    with pytest.raises(ValueError, match="'gamma' .* is not declared in the registry's entries"):
        REG.register(make_class("gamma", base=object))
    with pytest.raises(ValueError, match="'alpha' .* is not declared"):  # declared, but at another address
        REG.register(make_class("alpha", base=object))
    with pytest.raises(AdaptforgeError, match="unknown widget 'gamma'; known: alpha, beta"):
        REG.get("gamma")


PROJECT_REGISTRIES = {
    "adaptforge.merge.base": "MERGE_METHODS",
    "adaptforge.compose.base": "COMPOSERS",
    "adaptforge.generate.methods": "GENERATORS",
    "adaptforge.train.samplers.base": "SAMPLERS",
    "adaptforge.routing": "ROUTERS",
    "adaptforge.prune.base": "PRUNE_METHODS",
    "adaptforge.tta.base": "TTA_METHODS",
    "adaptforge.backends.base": "BACKENDS",
}


def test_every_project_registry_resolves_every_entry_in_a_fresh_process() -> None:
    """Importing only the module that defines a registry is enough to find and load every method in it."""
    import subprocess

    script = (
        "import importlib, json, sys\n"
        f"found = {{}}\nfor module, attr in {PROJECT_REGISTRIES!r}.items():\n"
        "    reg = getattr(importlib.import_module(module), attr)\n"
        "    names = reg.names()\n"
        "    found[attr] = [names, sorted(n for n in names if reg.get(n).name == n)]\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert set(found) == set(PROJECT_REGISTRIES.values())
    for attr, (names, loaded) in found.items():
        assert names and names == loaded, attr
    assert {"entropy", "arrow"} <= set(found["ROUTERS"][0]) and "dawin" in found["MERGE_METHODS"][0]
