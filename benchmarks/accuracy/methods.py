"""The methods the accuracy benchmark compares: the method table, what each method is, and its recipe for a run.

Every method is one line of :data:`TABLE`: a name and how to build its recipe from :class:`Parts`, the published
settings sized for the run (KD, DKD with its warm-up scaled, GSNR with four estimates an epoch, deepkd's default
recipe). To add a method, add a line to ``TABLE`` and one to ``LABELS``, and name it in a profile
(:mod:`benchmarks.accuracy.profiles`). Candidate defaults are lines of :data:`CANDIDATES` instead.

Two run-length adjustments apply to every method alike: DKD's warm-up lasts the same share of the run as 20 of
240 epochs (:func:`dkd_warmup`; whole epochs, so runs under 18 epochs get none), and GSNR coefficients are
re-estimated four times per epoch (:func:`gsnr_interval`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import attrs

import deepkd
from deepkd.errors import DeepKDError

# the methods of the smoke/default/full profiles (``methods: None`` runs all of these)
METHODS = (
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd_fixed",
    "deepkd_gsnr",
    "deepkd_official",
    "gsnr_nomask",
    "dynamic_sgd",
    "static_10",
    "static_20",
    "static_30",
)

# the long profile: the baselines, DeepKD's published recipes (official code, paper intent), deepkd's default recipe,
# the default with each axis switched off alone, and the step-size ablation (offsets that change a buffer's
# smoothing but not its step size, for the default and for DOT)
ABLATIONS = ("default_no_gsnr", "default_no_mask", "default_preserve_step", "default_kd_loss")
LONG_METHODS = (
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd_default",
    "deepkd_official",
    "deepkd_fixed",
    "default_no_gsnr",
    "default_no_mask",
    "default_preserve_step",
    "dot_preserve_step",
)

# Candidate defaults, run by the long profile and compared with ``deepkd_default`` on VALIDATION accuracy only.
# Each is the default recipe (``deepkd.compose()`` with the run-length adjustments) with ONE setting changed:
# ``name: (axis, change)``, where ``axis`` is "loss", "momentum" or "mask" and ``change`` is either a dict of field
# values for ``attrs.evolve`` of that axis's strategy (``{"easy": 0.2}``) or a whole strategy (a registered name, a
# config or a dict, as ``deepkd.compose`` takes them). To add a candidate, add one line here. A candidate this deepkd
# cannot build (a field it lacks) or that equals the default is left out and named in the report (and
# tests/test_benchmarks.py fails). The long profile is sized for these 6; each further one adds ~2.4 minutes.
CANDIDATES: dict[str, tuple[str, Any]] = {
    "cand_mask_easy_0.2": ("mask", {"easy": 0.2}),  # the dynamic mask starting from K = 20 % of the classes
    "cand_gsnr_delta_0.05": ("momentum", {"delta": 0.05}),  # GSNR offsets within ±0.05 instead of ±0.075
    "cand_mask_renormalize": ("mask", {"form": "renormalize"}),  # masked classes dropped, not pooled in one bin
    "cand_mask_kmax_0.3": ("mask", {"hard": 0.3}),  # K grows to 30 % of the classes at most, not to C - 1
    "cand_gsnr_split": ("momentum", {"estimator": "split"}),  # GSNR at fixed parameters, from split batches
    "cand_gsnr_minmax": ("momentum", {"allocation": "minmax"}),  # ±Δ for the extremes instead of Δ·tanh
}
LONG_CANDIDATES: tuple[str, ...] = tuple(CANDIDATES)

# what each method is, for the report (candidates are described by their change from the default)
LABELS: dict[str, str] = {
    "ce": "cross-entropy only, no teacher",
    "kd": "KD (T = 4, CE 0.1 / KD 0.9), SGD",
    "dkd": "DKD (α = 1, β = 8, T = 4), SGD",
    "dot": "KD with DOT momentum (Δ = 0.075)",
    "deepkd_fixed": "DeepKD paper-intent: KD base, fixed deltas (+.075, −.075, +.075), dynamic mask",
    "deepkd_gsnr": "DKD base, GSNR momentum, dynamic mask",
    "deepkd_official": "DeepKD as the official code behaves: its NCKD split, weight-decay placement, no mask",
    "gsnr_nomask": "DKD base, GSNR momentum, no mask",
    "dynamic_sgd": "DKD base, plain momentum, dynamic mask",
    "static_10": "DKD base, plain momentum, static mask of 10 % of the classes",
    "static_20": "DKD base, plain momentum, static mask of 20 % of the classes",
    "static_30": "DKD base, plain momentum, static mask of 30 % of the classes",
    "deepkd_default": "DeepKD default: `deepkd.compose()` (run-length adjusted)",
    "default_no_gsnr": "the default with plain momentum (`momentum = sgd`)",
    "default_no_mask": "the default without a mask (`mask = none`)",
    "default_kd_loss": "the default with the KD loss (T = 4, CE 0.1 / KD 0.9) instead of DKD",
    "default_preserve_step": "the default with step-preserving offsets (each buffer's gradient × (1 − μᵢ)/(1 − μ))",
    "dot_preserve_step": "DOT with step-preserving offsets (each buffer's gradient × (1 − μᵢ)/(1 − μ))",
}


# ---------------------------------------------------------------------------------------------- run-length scaling
def dkd_warmup(epochs: int) -> int:
    """DKD's warm-up in whole epochs: the share of the run that 20 of CIFAR's 240 epochs are, at least 1.

    DKD weights its KD parts by ``warm(e) = min(e / warmup, 1)``, epochs counted from 1, so ``warmup = 1`` is no
    warm-up at all: that is what runs under 18 epochs get (the smoke/default/full profiles). The long profile's
    24 epochs give 2 epochs: 0.5 in epoch 1, 1 from epoch 2 (CIFAR: 20 epochs, 0.05 in epoch 1).
    """
    return max(1, round(epochs * 20 / 240))


def gsnr_interval(steps_per_epoch: int) -> int:
    """GSNR re-estimation interval: four estimates per epoch."""
    return max(1, steps_per_epoch // 4)


def _has_field(strategy: Any, name: str) -> bool:
    kind: Any = type(strategy)
    return attrs.has(kind) and any(f.name == name and f.init for f in attrs.fields(kind))


def _evolve(strategy: Any, **changes: Any) -> Any:
    """``strategy`` (an attrs instance: a loss, momentum or mask) with some fields changed."""
    return attrs.evolve(strategy, **changes)


def run_length(recipe: deepkd.Recipe, epochs: int, steps_per_epoch: int) -> deepkd.Recipe:
    """``recipe`` with the run-length adjustments every method here gets: a loss with a ``warmup`` (DKD) warms up
    for :func:`dkd_warmup` epochs, a momentum with an ``interval`` (GSNR) re-estimates four times per epoch."""
    changes: dict[str, Any] = {}
    if _has_field(recipe.loss, "warmup"):
        changes["loss"] = _evolve(recipe.loss, warmup=dkd_warmup(epochs))
    if _has_field(recipe.momentum, "interval"):
        changes["momentum"] = _evolve(recipe.momentum, interval=gsnr_interval(steps_per_epoch))
    return recipe.replace(**changes) if changes else recipe


# ---------------------------------------------------------------------------------------------- the method table
class Parts(NamedTuple):
    """The settings the method table combines, sized for one run: the published KD and DKD losses and GSNR
    momentum (hyperparameters of the CIFAR-100 papers, run-length adjusted), and deepkd's default recipe
    (whatever the library's defaults are, with the same adjustments)."""

    classes: int
    kd: deepkd.KD
    dkd: deepkd.DKD
    gsnr: deepkd.GSNR
    default: deepkd.Recipe

    def static(self, share: float) -> deepkd.StaticMask:
        """A static mask keeping ``share`` of the classes (at least one)."""
        return deepkd.StaticMask(k=max(1, round(share * self.classes)))


def parts(classes: int, epochs: int, steps_per_epoch: int) -> Parts:
    """The :class:`Parts` of a run of ``epochs`` epochs of ``steps_per_epoch`` steps on ``classes`` classes."""
    return Parts(
        classes=classes,
        kd=deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9),
        dkd=deepkd.DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup=dkd_warmup(epochs), w_ce=1.0),
        gsnr=deepkd.GSNR(interval=gsnr_interval(steps_per_epoch)),
        default=run_length(deepkd.compose(name="deepkd_default"), epochs, steps_per_epoch),
    )


def _compose(name: str, loss: Any, momentum: Any, mask: Any) -> deepkd.Recipe:
    return deepkd.compose(loss=loss, momentum=momentum, mask=mask, name=name)


# Every method but the candidates: name -> its recipe built from the run's Parts. To add one, add a line.
TABLE: dict[str, Callable[[Parts], deepkd.Recipe]] = {
    "ce": lambda p: _compose("ce", "ce", "sgd", "none"),
    "kd": lambda p: _compose("kd", p.kd, "sgd", "none"),
    "dkd": lambda p: _compose("dkd", p.dkd, "sgd", "none"),
    "dot": lambda p: _compose("dot", p.kd, deepkd.DOT(delta=0.075), "none"),
    # DeepKD paper-intent
    "deepkd_fixed": lambda p: _compose("deepkd_fixed", p.kd, deepkd.FixedOffsets(), deepkd.DynamicMask()),
    "deepkd_gsnr": lambda p: _compose("deepkd_gsnr", p.dkd, p.gsnr, deepkd.DynamicMask()),
    "deepkd_official": lambda p: _compose(
        "deepkd_official",
        deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9, split="official"),
        deepkd.FixedOffsets(reference_quirks=True),
        "none",
    ),
    "gsnr_nomask": lambda p: _compose("gsnr_nomask", p.dkd, p.gsnr, "none"),
    "dynamic_sgd": lambda p: _compose("dynamic_sgd", p.dkd, "sgd", deepkd.DynamicMask()),
    "static_10": lambda p: _compose("static_10", p.dkd, "sgd", p.static(0.1)),
    "static_20": lambda p: _compose("static_20", p.dkd, "sgd", p.static(0.2)),
    "static_30": lambda p: _compose("static_30", p.dkd, "sgd", p.static(0.3)),
    "deepkd_default": lambda p: p.default,
    "default_no_gsnr": lambda p: p.default.replace(momentum="sgd", name="default_no_gsnr"),
    "default_no_mask": lambda p: p.default.replace(mask="none", name="default_no_mask"),
    "default_kd_loss": lambda p: p.default.replace(loss=p.kd, name="default_kd_loss"),
    "default_preserve_step": lambda p: p.default.replace(
        momentum=_evolve(p.default.momentum, preserve_step=True), name="default_preserve_step"
    ),
    "dot_preserve_step": lambda p: _compose(
        "dot_preserve_step", p.kd, deepkd.DOT(delta=0.075, preserve_step=True), "none"
    ),
}


def all_methods() -> list[str]:
    """Every method a profile or ``--methods`` may name, in the order the command line lists them."""
    return list(dict.fromkeys([*METHODS, *LONG_METHODS, *ABLATIONS, *CANDIDATES]))


# ---------------------------------------------------------------------------------------------- recipes
def candidate(default: deepkd.Recipe, name: str, epochs: int, steps_per_epoch: int) -> deepkd.Recipe:
    """``CANDIDATES[name]`` built from the (run-length adjusted) default recipe: one setting changed."""
    axis, change = CANDIDATES[name]
    if axis not in ("loss", "momentum", "mask"):
        raise ValueError(f"candidate {name!r}: axis must be loss, momentum or mask, got {axis!r}")
    if isinstance(change, Mapping) and "name" not in change:
        return default.replace(**{axis: _evolve(getattr(default, axis), **change)}, name=name)
    return run_length(default.replace(**{axis: change}, name=name), epochs, steps_per_epoch)


def _plain(recipe: deepkd.Recipe) -> dict[str, Any]:
    return {k: v for k, v in recipe.to_dict().items() if k != "name"}


def _candidate_or_why(default: deepkd.Recipe, name: str, epochs: int, steps_per_epoch: int) -> deepkd.Recipe | str:
    """The candidate's recipe, or why it is left out: this deepkd cannot build it, or it equals the default."""
    try:
        recipe = candidate(default, name, epochs, steps_per_epoch)
    except (TypeError, ValueError, AttributeError, LookupError, DeepKDError) as exc:
        return f"cannot be built with this deepkd: {exc}"
    return "equals the default recipe" if _plain(recipe) == _plain(default) else recipe


def recipes(
    classes: int, epochs: int, steps_per_epoch: int, skipped: dict[str, str] | None = None
) -> dict[str, deepkd.Recipe]:
    """Every method's recipe for a run of ``epochs`` epochs of ``steps_per_epoch`` steps: :data:`TABLE`, then the
    :data:`CANDIDATES`.

    A candidate that this version of deepkd cannot build (a field it lacks), or that equals the default, is left
    out; ``skipped`` (when given) receives why.
    """
    run = parts(classes, epochs, steps_per_epoch)
    book = {name: build(run) for name, build in TABLE.items()}
    for name in CANDIDATES:
        recipe = _candidate_or_why(run.default, name, epochs, steps_per_epoch)
        if isinstance(recipe, str):
            if skipped is not None:
                skipped[name] = recipe
            continue
        book[name] = recipe
    return book


def describe_change(default: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """What differs between two recipes' plain data (:meth:`deepkd.Recipe.to_dict`), e.g. ``mask.easy: 0.1 → 0.2``."""
    changes = []
    for axis in ("loss", "momentum", "mask"):
        a, b = default.get(axis, {}), other.get(axis, {})
        if a.get("name") != b.get("name"):
            changes.append(f"{axis}: {a.get('name')} → {b.get('name')}")
            continue
        for key in dict.fromkeys([*a, *b]):
            if a.get(key) != b.get(key):
                changes.append(f"{axis}.{key}: {a.get(key)} → {b.get(key)}")
    return "; ".join(changes) or "none"


def label(method: str, book: Mapping[str, deepkd.Recipe]) -> str:
    """What ``method`` is, for the report: its :data:`LABELS` entry, or (a candidate) its change from the default."""
    return LABELS.get(method) or "the default with " + describe_change(
        book["deepkd_default"].to_dict(), book[method].to_dict()
    )
