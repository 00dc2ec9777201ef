"""ImageNet-style classifiers from torchvision, built from scratch (``weights=None``: nothing is ever downloaded).

Their published ImageNet weights can be read by name (``IMAGENET1K_V1``...) from torchvision's download cache,
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``):
:func:`pretrained_state_dict` loads the file when it is there and says which file to put where when it is not.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); Sandler et al., "MobileNetV2" (CVPR
2018); Ma et al., "ShuffleNet V2" (ECCV 2018); Howard et al., "Searching for MobileNetV3" (ICCV 2019).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from deepkd.errors import CheckpointError, ConfigError, InstallError
from deepkd.models._registry import register_model

__all__ = [
    "TORCHVISION_MODELS",
    "build_torchvision",
    "check_pretrained",
    "pretrained_path",
    "pretrained_state_dict",
    "pretrained_url",
]


def _torchvision_mismatch(exc: BaseException) -> str:
    """Why torchvision would not import, and the pip command that installs a torchvision that works with torch."""
    from importlib.metadata import PackageNotFoundError, version

    base = torch.__version__.split("+")[0]
    major, minor = (int(v) for v in base.split(".")[:2])
    vision = f"'torchvision==0.{minor + 15}.*'" if major == 2 else "torchvision"  # torch 2.N pairs with 0.(N+15)
    index = " --index-url https://download.pytorch.org/whl/cpu" if "+cpu" in torch.__version__ else ""
    try:
        installed = version("torchvision")
    except PackageNotFoundError:
        return f"torchvision is not installed: pip install {vision}{index} (the build released with torch {base})"
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and not missing.startswith("torchvision"):
        return (
            f"torchvision {installed} needs the {missing!r} module, which is not installed; reinstalling torchvision "
            f"brings back its dependencies: pip install 'torchvision=={installed}'{index}"
        )
    return (
        f"torchvision {installed} does not work with torch {torch.__version__} ({type(exc).__name__}: {exc}): the "
        "two must be builds made for each other, the same release pair (torch 2.N with torchvision 0.(N+15)) from "
        f"the same index (CPU builds with CPU builds); reinstall both in one command: pip install --force-reinstall "
        f"'torch=={base}' {vision}{index}"
    )


try:
    import torchvision.models as tvm  # type: ignore[import-untyped, unused-ignore]
except (ImportError, RuntimeError) as _exc:  # a torchvision built for another torch fails as it registers operators
    raise InstallError(_torchvision_mismatch(_exc)) from _exc


#: registered name -> torchvision builder name
TORCHVISION_MODELS: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
}

_FORBIDDEN = ("weights", "weights_backbone", "pretrained", "progress")


def build_torchvision(tv_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build ``torchvision.models.<tv_name>(weights=None, num_classes=num_classes, **kwargs)``."""
    bad = [k for k in _FORBIDDEN if k in kwargs]
    if bad:
        raise ConfigError(
            f"model {tv_name!r}: {', '.join(bad)} not supported; deepkd never downloads pretrained weights"
        )
    builder: Callable[..., nn.Module] = getattr(tvm, tv_name)
    try:
        model = builder(weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # an unknown keyword argument
        raise ConfigError(f"model {tv_name!r}: {exc}") from None
    model.num_classes = num_classes  # type: ignore[assignment]  # torchvision models lack the attribute
    return model


def _weights_enum(name: str) -> Any:
    if name not in TORCHVISION_MODELS:
        raise ConfigError(
            f"pretrained weights exist only for the torchvision models ({', '.join(TORCHVISION_MODELS)}), "
            f'not for {name!r}; load other models\' weights with checkpoint = "..."'
        )
    return tvm.get_model_weights(TORCHVISION_MODELS[name])


def check_pretrained(name: str, weights: str) -> str:
    """The name of torchvision's weights ``weights`` (``"IMAGENET1K_V1"``; ``"DEFAULT"`` is torchvision's alias of
    the best ones) for model ``name``.

    Raises:
        ConfigError: ``name`` is not a torchvision model, or it has no weights of that name (the valid ones listed).
    """
    enum = _weights_enum(name)
    valid = [w.name for w in enum]
    try:
        return str(enum[weights].name)
    except KeyError:
        raise ConfigError(
            f"{name!r} has no pretrained weights {weights!r}; torchvision's are {', '.join(valid)} (or DEFAULT)"
        ) from None


def pretrained_url(name: str, weights: str) -> str:
    """Where torchvision downloads model ``name``'s ``weights`` from (deepkd itself never downloads)."""
    return str(_weights_enum(name)[check_pretrained(name, weights)].url)


def pretrained_path(name: str, weights: str) -> Path:
    """The file torchvision's cache keeps model ``name``'s ``weights`` in: ``torch.hub.get_dir()/checkpoints/<file
    name of the URL>``, as ``torchvision`` (``torch.hub.load_state_dict_from_url``) names it."""
    file_name = os.path.basename(urlparse(pretrained_url(name, weights)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def pretrained_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """Model ``name``'s published ``weights`` (e.g. ``"IMAGENET1K_V1"``) from torchvision's cache, read with
    ``torch.load(weights_only=True)``. Nothing is downloaded: when the file is missing, the error gives the URL and
    the path to put it at. The file's hash is not checked (torchvision checks it when it downloads).

    Raises:
        ConfigError: no such model or weights.
        CheckpointError: the file is not in the cache, or unreadable.
    """
    from deepkd.checkpoint import read_state_dict  # deepkd.checkpoint does not import the models

    path = pretrained_path(name, weights)
    if not path.is_file():
        raise CheckpointError(
            f"torchvision's {check_pretrained(name, weights)} weights of {name!r} are not in the torch hub cache: "
            f"deepkd never downloads, so download {pretrained_url(name, weights)} to {str(path)!r} (the cache is "
            f"torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another "
            f"directory), or run torchvision.models.get_model({TORCHVISION_MODELS[name]!r}, "
            f"weights={check_pretrained(name, weights)!r}) once with internet access"
        )
    return read_state_dict(path)


def _make_builder(name: str, tv_name: str) -> Callable[..., nn.Module]:
    def builder(num_classes: int, **kwargs: Any) -> nn.Module:
        return build_torchvision(tv_name, num_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision ``{tv_name}`` with random initialisation (``weights=None``)."
    return builder


for _name, _tv_name in TORCHVISION_MODELS.items():
    register_model(_name)(_make_builder(_name, _tv_name))
