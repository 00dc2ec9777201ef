"""Configs: round trips (dict, TOML, JSON, files) for every registered strategy, and strict, readable rejections."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import config as cfg
from deepkd.errors import ConfigError, UnknownStrategyError
from deepkd.momentum import merged_plan
from deepkd.recipe import Recipe
from deepkd.registry import Registry, name_of

# ----------------------------------------------------------------------------------------------- strategies
finite = dict(allow_nan=False, allow_infinity=False)
nonneg = st.floats(0.0, 1e6, **finite)
positive = st.floats(0.0, 1e6, exclude_min=True, **finite)
unit_open = st.floats(0.0, 1.0, exclude_min=True, **finite)  # (0, 1]
offset = st.floats(-1.0, 1.0, exclude_min=True, exclude_max=True, **finite)  # (-1, 1)
seed = st.integers(0, 2**32)


@st.composite
def _dynamic(draw: st.DrawFn) -> deepkd.DynamicMask:
    a1 = draw(st.floats(0.0, 1.0, exclude_max=True, **finite))
    a2 = draw(st.floats(a1, 1.0, exclude_min=True, **finite))
    easy = draw(unit_open)
    hard = draw(st.floats(easy, 1.0, **finite))
    horizon = draw(st.integers(1, 10_000))
    form = draw(st.sampled_from(["bucket", "renormalize"]))
    return deepkd.DynamicMask(thresholds=(a1, a2), easy=easy, hard=hard, horizon=horizon, form=form)


# One explicit strategy per built-in strategy class; every field drawn across its validator's range.
STRATEGIES: dict[tuple[str, str], st.SearchStrategy] = {
    ("loss", "ce"): st.builds(deepkd.CE, w_ce=nonneg),
    ("loss", "kd"): st.builds(
        deepkd.KD,
        temperature=positive,
        w_ce=nonneg,
        w_kd=nonneg,
        standardize=st.booleans(),
        split=st.sampled_from(["exact", "official"]),
    ),
    ("loss", "dkd"): st.builds(
        deepkd.DKD,
        alpha=nonneg,
        beta=nonneg,
        temperature=positive,
        warmup=st.integers(0, 10_000),
        w_ce=nonneg,
        standardize=st.booleans(),
    ),
    ("momentum", "sgd"): st.builds(deepkd.PlainMomentum),
    ("momentum", "dot"): st.builds(deepkd.DOT, delta=offset),
    ("momentum", "fixed"): st.builds(
        deepkd.FixedOffsets, tog=offset, tcg=offset, ncg=offset, reference_quirks=st.booleans()
    ),
    ("momentum", "gsnr"): st.builds(
        deepkd.GSNR,
        delta=st.floats(0.0, 0.09, **finite),
        interval=st.integers(1, 10**6),
        estimator=st.sampled_from(["split", "stream"]),
        splits=st.integers(2, 16),
        allocation=st.sampled_from(["tanh", "minmax"]),
        scale=positive,
        fraction=unit_open,
        beta=st.none() | st.floats(0.0, 1.0, exclude_max=True, **finite),
        seed=seed,
    ),
    ("mask", "none"): st.builds(deepkd.NoMask),
    ("mask", "static"): st.builds(
        deepkd.StaticMask,
        k=st.none() | st.integers(1, 10_000),
        fraction=unit_open,
        form=st.sampled_from(["bucket", "renormalize"]),
    ),
    ("mask", "dynamic"): _dynamic(),
}
REGISTRIES = {"loss": deepkd.LOSSES, "momentum": deepkd.MOMENTA, "mask": deepkd.MASKS}


def _axis(axis: str) -> st.SearchStrategy:
    """Any registered strategy of an axis: the explicit strategy, or the defaults for a user-registered class."""
    registry = REGISTRIES[axis]
    return st.one_of(*[STRATEGIES.get((axis, n), st.builds(registry.get(n))) for n in registry.names()])


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    loss = draw(_axis("loss"), label="loss")
    momentum = draw(_axis("momentum"), label="momentum")
    if (
        isinstance(momentum, deepkd.FixedOffsets)
        and momentum.reference_quirks
        and tuple(loss.part_names) != ("task", "tckd", "nckd")
    ):
        momentum = attrs.evolve(momentum, reference_quirks=False)  # quirks need all three parts (tested below)
    mask = draw(_axis("mask"), label="mask")
    name = draw(st.none() | st.text(max_size=20), label="name")
    return Recipe(loss=loss, momentum=momentum, mask=mask, name=name)


def test_every_builtin_strategy_has_an_explicit_strategy() -> None:
    for axis, registry in REGISTRIES.items():
        for n in registry.names():
            if registry.get(n).__module__.startswith("deepkd."):
                assert (axis, n) in STRATEGIES, f"add a hypothesis strategy for the built-in {axis} {n!r}"


# ----------------------------------------------------------------------------------------------- round trips
@given(recipes())
def test_round_trip_dict(recipe: Recipe) -> None:
    data = recipe.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data only
    for axis in ("loss", "momentum", "mask"):
        assert data[axis]["name"] == name_of(getattr(recipe, axis))
    assert Recipe.from_dict(data) == recipe
    assert deepkd.build(data) == recipe
    assert deepkd.compose(**{k: data[k] for k in ("loss", "momentum", "mask")}, name=recipe.name) == recipe


@given(recipes())
def test_round_trip_text(recipe: Recipe) -> None:
    toml_text = recipe.dumps()
    back = cfg.loads(toml_text, Recipe)
    assert back == recipe
    assert back.dumps() == toml_text
    json_text = recipe.dumps("json")
    assert cfg.loads(json_text, Recipe, "json") == recipe


@given(recipes())
def test_round_trip_files(recipe: Recipe) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("toml", "json"):
            path = Path(tmp) / f"r.{suffix}"
            recipe.save(path)
            assert Recipe.load(path) == recipe
            assert deepkd.build(path) == recipe
            assert deepkd.load(path, Recipe) == recipe


def test_defaults_round_trip_from_bare_names() -> None:
    r = Recipe.from_dict({"loss": "dkd", "momentum": "gsnr", "mask": "dynamic"})
    assert r == deepkd.compose() == Recipe()
    assert cfg.loads('loss = "kd"\nmomentum = "dot"\nmask = "none"\n', Recipe) == deepkd.compose("kd", "dot", "none")


# ----------------------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    ("text", "key", "path"),
    [
        pytest.param("bogus = 1\n", "bogus", "$.bogus", id="top-level"),
        pytest.param('[loss]\nname = "kd"\ntemprature = 2.0\n', "temprature", "$.loss.temprature", id="loss"),
        pytest.param('[momentum]\nname = "gsnr"\ndeltta = 0.1\n', "deltta", "$.momentum.deltta", id="momentum"),
        pytest.param('[momentum]\nname = "sgd"\nlr = 0.1\n', "lr", "$.momentum.lr", id="momentum-no-fields"),
        pytest.param('[mask]\nname = "none"\nk = 3\n', "k", "$.mask.k", id="mask-none"),
        pytest.param('[mask]\nname = "none"\nform = "bucket"\n', "form", "$.mask.form", id="mask-init-false-field"),
    ],
)
def test_unknown_keys_rejected(text: str, key: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.loads(text, Recipe)
    (line,) = info.value.lines
    assert f"{key!r}" in line and line.endswith(f"@ {path}")


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'temperature'\?.*@ \$\.loss\.temprature"):
        deepkd.compose(loss={"name": "kd", "temprature": 2.0})


# ----------------------------------------------------------------------------------------------- unknown strategies
@pytest.mark.parametrize(
    ("axis", "typo", "closest"),
    [("momentum", "gnsr", "gsnr"), ("mask", "dynamc", "dynamic"), ("loss", "dkdd", "dkd")],
)
def test_unknown_strategy_names(axis: str, typo: str, closest: str) -> None:
    known = REGISTRIES[axis].names()
    with pytest.raises(UnknownStrategyError) as info:
        deepkd.compose(**{axis: typo})
    err = info.value
    assert err.suggestion == closest and err.name == typo and err.known == known
    msg = str(err)
    assert f"Did you mean {closest!r}" in msg and all(n in msg for n in known)
    assert isinstance(err, LookupError) and isinstance(err, deepkd.DeepKDError)
    # from a config, the same message arrives as a ConfigError line with its path
    for data in ({axis: typo}, {axis: {"name": typo}}):
        with pytest.raises(ConfigError) as cinfo:
            Recipe.from_dict(data)
        (line,) = cinfo.value.lines
        assert closest in line and line.endswith(f"@ ${'.' + axis}.name") and all(n in line for n in known)


def test_compose_gnsr_mentions_gsnr() -> None:
    with pytest.raises(UnknownStrategyError, match="gsnr"):
        deepkd.compose(momentum="gnsr")


def test_unknown_strategy_without_close_match() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        deepkd.compose(mask="zzzzzz")
    assert info.value.suggestion is None and "Did you mean" not in str(info.value)
    assert all(n in str(info.value) for n in deepkd.MASKS.names())


def test_strategy_table_needs_a_name() -> None:
    with pytest.raises(ConfigError, match=r"needs a 'name' key .*gsnr.* @ \$\.momentum$"):
        Recipe.from_dict({"momentum": {"delta": 0.1}})


# ----------------------------------------------------------------------------------------------- wrong types, values
@pytest.mark.parametrize(
    ("text", "needle", "path"),
    [
        pytest.param('[momentum]\nname = "gsnr"\ninterval = 1.5\n', "1.5", "$.momentum.interval", id="interval-float"),
        pytest.param('[loss]\nname = "dkd"\nstandardize = "no"\n', "'no'", "$.loss.standardize", id="bool-string"),
        pytest.param('[momentum]\nname = "gsnr"\ndelta = true\n', "True", "$.momentum.delta", id="delta-bool"),
        pytest.param('[mask]\nname = "static"\nk = 2.0\n', "2.0", "$.mask.k", id="k-float"),
        pytest.param('[mask]\nname = "static"\nk = true\n', "True", "$.mask.k", id="k-bool"),
        pytest.param('[mask]\nname = "dynamic"\nhorizon = 2.5\n', "2.5", "$.mask.horizon", id="horizon-float"),
        pytest.param('[loss]\nname = "dkd"\nwarmup = "20"\n', "'20'", "$.loss.warmup", id="warmup-string"),
        pytest.param("name = 3\n", "3", "$.name", id="name-int"),
        pytest.param('[loss]\nname = "kd"\nsplit = "approx"\n', "approx", "$.loss.split", id="literal"),
        pytest.param(
            '[mask]\nname = "dynamic"\nthresholds = [0.3, "x"]\n', "float", "$.mask.thresholds[1]", id="tuple-item"
        ),
        pytest.param("momentum = 3\n", "3", "$.momentum", id="strategy-int"),
        pytest.param('[momentum]\nname = "gsnr"\ndelta = 2\n', "2", "$.momentum.delta", id="delta-range"),
        pytest.param('[momentum]\nname = "gsnr"\ninterval = 0\n', "0", "$.momentum.interval", id="interval-range"),
        pytest.param('[loss]\nname = "kd"\ntemperature = 0.0\n', "0.0", "$.loss.temperature", id="temperature-zero"),
        pytest.param('[mask]\nname = "dynamic"\neasy = 0.5\nhard = 0.2\n', "0.2", "$.mask", id="cross-field"),
    ],
)
def test_wrong_types_and_values_rejected(text: str, needle: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.loads(text, Recipe)
    (line,) = info.value.lines
    assert needle in line and line.endswith(f"@ {path}"), line


def test_several_errors_reported_at_once() -> None:
    data = {
        "loss": {"name": "dkd", "standardize": "no"},
        "momentum": {"name": "gsnr", "interval": 1.5, "delta": True, "bogus": 1},
        "mask": {"name": "dynamc"},
        "extra": 0,
    }
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(data)
    lines = info.value.lines
    paths = sorted(line.rsplit(" @ ", 1)[1] for line in lines)
    assert paths == sorted(
        ["$.loss.standardize", "$.momentum.interval", "$.momentum.delta", "$.momentum.bogus", "$.mask.name", "$.extra"]
    )
    assert str(info.value) == "\n".join(lines)


def test_cross_field_refusal_carries_a_path() -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"loss": "ce", "momentum": {"name": "fixed", "reference_quirks": True}})
    assert all(" @ $" in line for line in info.value.lines), info.value.lines


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: deepkd.StaticMask(k=True), id="StaticMask.k"),
        pytest.param(lambda: deepkd.KD(temperature=True), id="KD.temperature"),
        pytest.param(lambda: deepkd.DKD(warmup=True), id="DKD.warmup"),
        pytest.param(lambda: deepkd.GSNR(interval=True), id="GSNR.interval"),
    ],
)
def test_constructor_accepted_configs_round_trip(make) -> None:
    try:
        strategy = make()
    except (TypeError, ValueError):
        return  # rejecting the bool up front is fine
    recipe = deepkd.compose(**{_axis_of(strategy): strategy})
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def _axis_of(strategy: object) -> str:
    return next(a for a, reg in REGISTRIES.items() if reg.name_for(type(strategy)) is not None)


# ----------------------------------------------------------------------------------------------- readability
def test_str_is_readable() -> None:
    text = str(deepkd.compose(momentum="gsnr", mask="dynamic", name="deepkd-cifar"))
    for needle in (
        "'deepkd-cifar'",
        "gsnr(delta=0.075",
        "dynamic(thresholds=(0.3, 0.6)",
        "dkd(alpha=1.0",
        "task | tckd | nckd",
        "3 products",
    ):
        assert needle in text, (needle, text)
    assert "object at 0x" not in text and len(text.splitlines()) == 5
    merged = str(deepkd.compose(loss="kd", momentum="sgd", mask="none"))
    assert "task+tckd+nckd (1 product a step)" in merged


# ----------------------------------------------------------------------------------------------- user strategies
@attrs.frozen(kw_only=True)
class Mine:
    """A toy momentum strategy: task at μ − shift, everything else at μ + shift."""

    shift: float = attrs.field(
        default=0.02,
        validator=[attrs.validators.instance_of(float), attrs.validators.ge(0.0), attrs.validators.lt(0.5)],
    )

    def plan(self, parts):
        return merged_plan(parts, {p: -self.shift if p == "task" else self.shift for p in parts})


@attrs.frozen(kw_only=True)
class _Other:
    """A second throw-away momentum strategy (only ever registered by the tests below)."""

    def plan(self, parts):
        return merged_plan(parts, {p: 0.0 for p in parts})


def test_user_registered_momentum() -> None:
    import torch

    assert "mine" not in deepkd.MOMENTA
    deepkd.register_momentum("mine")(Mine)
    try:
        assert "mine" in deepkd.MOMENTA.names()
        r = deepkd.compose(loss="kd", momentum="mine", mask="none")
        assert r.momentum == Mine()
        r2 = deepkd.compose(loss="kd", momentum={"name": "mine", "shift": 0.05})
        assert r2.momentum == Mine(shift=0.05)
        assert Recipe.from_dict(r2.to_dict()) == r2
        assert cfg.loads(r2.dumps(), Recipe) == r2
        assert r2.to_dict()["momentum"] == {"name": "mine", "shift": 0.05}
        assert "mine(shift=0.05)" in str(r2)
        with pytest.raises(ConfigError, match=r"'shiftt'.*@ \$\.momentum\.shiftt"):
            deepkd.compose(momentum={"name": "mine", "shiftt": 0.1})
        with pytest.raises(ConfigError, match=r"@ \$\.momentum\.shift"):
            Recipe.from_dict({"momentum": {"name": "mine", "shift": 0.7}})
        with pytest.raises(ValueError, match="already registered"):
            deepkd.register_momentum("mine")(_Other)
        assert deepkd.MOMENTA.get("mine") is Mine
        # usable end to end
        model = torch.nn.Linear(4, 3)
        opt = deepkd.DistillOptimizer(model.parameters(), r2, lr=0.1)
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        out = opt.distill_step(model(x), torch.randn(8, 3), y, epoch=1)
        assert out.momenta == pytest.approx({"task": 0.85, "tckd": 0.95, "nckd": 0.95})
    finally:
        deepkd.MOMENTA.unregister("mine")
    assert "mine" not in deepkd.MOMENTA
    with pytest.raises(UnknownStrategyError):
        deepkd.compose(momentum="mine")


def test_register_rejects_non_attrs_class() -> None:
    class Plain:
        def plan(self, parts):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(TypeError, match="attrs"):
        deepkd.register_momentum("plain_thing")(Plain)
    assert "plain_thing" not in deepkd.MOMENTA


def test_refused_registration_leaves_the_class_untouched() -> None:
    deepkd.register_momentum("other_thing")(_Other)
    try:
        with pytest.raises(ValueError, match="already registered"):
            deepkd.register_momentum("gsnr")(_Other)
        assert name_of(_Other) == "other_thing"
        assert deepkd.compose(loss="kd", momentum=_Other()).to_dict()["momentum"] == {"name": "other_thing"}
    finally:
        deepkd.MOMENTA.unregister("other_thing")
    assert name_of(_Other) == "_Other"  # the registry is the one record of the name


def test_name_of_and_the_registered_instance_validator() -> None:
    assert (name_of(deepkd.GSNR()), name_of(deepkd.GSNR), name_of(_Other())) == ("gsnr", "gsnr", "_Other")

    @attrs.frozen
    class Holder:
        momentum: object = attrs.field(validator=deepkd.MOMENTA.validator())

    assert Holder(deepkd.DOT()).momentum == deepkd.DOT()
    with pytest.raises(TypeError) as info:
        Holder(_Other())
    known = ", ".join(deepkd.MOMENTA.names())
    assert str(info.value) == f"momentum must be an instance of a registered momentum strategy ({known}), got _Other()"


def test_registry_kinds_read_naturally() -> None:
    from deepkd.data import DATASETS
    from deepkd.models import MODELS

    with pytest.raises(UnknownStrategyError, match=r"^unknown model 'resnt8'\. Did you mean .* Known models: "):
        MODELS.get("resnt8")
    with pytest.raises(UnknownStrategyError, match=r"^unknown data set 'digts'\. Did you mean .* Known data sets: "):
        DATASETS.get("digts")
    with pytest.raises(ValueError, match=r"^widget names must be identifiers"):
        Registry("thing", kind="widget").register("not a name")


@attrs.frozen(kw_only=True)
class _Checked:
    """A momentum strategy that structures a sub-config itself and so may raise a ConfigError with its own paths."""

    inner: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        cfg.structure(self.inner, Mine)

    def plan(self, parts):
        return merged_plan(parts, {p: 0.0 for p in parts})


def test_config_errors_raised_inside_a_hook_get_the_outer_path() -> None:
    deepkd.register_momentum("checked")(_Checked)
    try:
        with pytest.raises(ConfigError) as info:
            Recipe.from_dict({"momentum": {"name": "checked", "inner": {"shift": 0.7, "shiftt": 1}}})
        assert sorted(info.value.lines) == [
            "'shift' must be < 0.5: 0.7 @ $.momentum.shift",
            "unknown key 'shiftt' for Mine; did you mean 'shift'? Valid keys: shift @ $.momentum.shiftt",
        ]
    finally:
        deepkd.MOMENTA.unregister("checked")
