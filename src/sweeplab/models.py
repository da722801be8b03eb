"""The networks: the CIFAR ResNet family (3x3 stem, no max-pool, four stages of basic blocks; its classes
live in sweeplab_model, which travels with every logged model) and any classification model torchvision
lists, with its head sized to the data and, for small images, its stem adapted the way the CIFAR ResNet is."""

from __future__ import annotations

import difflib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from sweeplab.errors import ConfigError
from sweeplab_model.resnet import BasicBlock, ResNet  # noqa: F401  (models logged by earlier versions pickled both here)

log = logging.getLogger(__name__)


def resnet18(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, width)


def resnet34(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, width)


# -- any torchvision classification model ---------------------------------------------------------
# Without weights these two would return their auxiliary outputs too while training (and warn about
# their initialization); with weights torchvision's builders drop the auxiliary heads themselves.
_SINGLE_OUTPUT = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
DOWNLOAD_TIMEOUT_S = 30


def torchvision_names() -> list[str]:
    """The classification models torchvision lists (``torchvision.models.list_models``)."""
    from torchvision import models

    return models.list_models(module=models)


def torchvision_model(
    name: str,
    num_classes: int = 1000,
    weights: str | None = None,
    small_input: bool = False,
    kwargs: dict | None = None,
) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``num_classes`` outputs.

    ``weights`` names pretrained weights ("DEFAULT", "IMAGENET1K_V1" or "ResNet18_Weights.IMAGENET1K_V1"),
    read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) when the file is there, else
    downloaded; with weights for another number of classes the classifier head is replaced by a fresh
    one. ``small_input`` adapts the stem to small images (see ``adapt_to_small_input``). ``kwargs`` go
    to torchvision's constructor (e.g. ``dropout``, or ``image_size`` for a vision transformer).
    """
    from torchvision import models

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise ConfigError(f"model.name={name!r} is not a torchvision classification model; {hint}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes!r} must be an integer >= 1")
    args = dict(kwargs or {})
    if weights is None or weights is False:
        model = models.get_model(name, num_classes=num_classes, **{**_SINGLE_OUTPUT.get(name, {}), **args})
    else:
        chosen = _weights_of(name, "DEFAULT" if weights is True else str(weights))
        _ensure_cached(chosen, str(weights))
        model = models.get_model(name, weights=chosen, **args)
        if num_classes != len(chosen.meta["categories"]):
            _replace_head(model, num_classes, len(chosen.meta["categories"]))
    if small_input:
        changes = adapt_to_small_input(model)
        log.info(f"model.small_input: {'; '.join(changes) if changes else f'{name} needs no change'}")
    return model


def _weights_of(name: str, weights: str):
    """The weights enum member that ``weights`` names for model ``name``; a one-line error otherwise."""
    from torchvision import models

    enum = models.get_model_weights(name)
    available = ", ".join(["DEFAULT", *(w.name for w in enum)])
    if "." in weights:
        try:
            chosen = models.get_weight(weights)
        except (ValueError, KeyError, AttributeError):
            chosen = None
        if chosen is None or type(chosen) is not enum:
            raise ConfigError(
                f"model.weights={weights} are not weights of {name}; use one of {available} (or {enum.__name__}.<name>)"
            )
        return chosen
    try:
        return enum[weights]
    except KeyError:
        raise ConfigError(f"model.weights={weights} are not weights of {name}; use one of {available}") from None


def hub_file(weights) -> Path:
    """Where torch hub keeps (or would keep) the file of ``weights``: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _ensure_cached(weights, asked: str) -> None:
    """The weights' file in the torch hub cache, downloaded if it is not there yet; a one-line error
    (there is no network, or the server refused) instead of a traceback or a long wait."""
    path = hub_file(weights)
    if path.is_file():
        log.info(f"model.weights={asked}: {weights} from the torch hub cache {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        log.info(f"model.weights={asked}: downloading {weights.url} to {path}")
        torch.hub.download_url_to_file(weights.url, str(path), progress=False)
    except Exception as err:  # URLError, HTTPError, timeouts, a full disk: all mean "not available here"
        reason = str(getattr(err, "reason", None) or err).strip().splitlines()
        raise ConfigError(
            f"model.weights={asked}: {weights} ({path.name}) is not in the torch hub cache {path.parent} and "
            f"could not be downloaded ({reason[0] if reason else type(err).__name__}); put the file there "
            f"(or point TORCH_HOME at a cache that has it), or use model.weights=null"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _replace_head(model: nn.Module, num_classes: int, pretrained_classes: int) -> None:
    """A fresh classifier for ``num_classes``: the model's last Linear (or 1x1 Conv2d, SqueezeNet's)
    layer, which is the classifier in every torchvision classification family."""
    last = None
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = path, module
    path, old = last
    outputs = old.out_features if isinstance(old, nn.Linear) else old.out_channels
    if outputs != pretrained_classes:
        raise ConfigError(f"cannot find the classifier of {type(model).__name__} to give it {num_classes} outputs")
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None)
    _set_module(model, path, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    log.info(f"model: the pretrained {pretrained_classes}-class head {path} replaced by a new {num_classes}-class one")


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def adapt_to_small_input(model: nn.Module) -> list[str]:
    """Adapt an ImageNet stem to small (e.g. 32x32) images, as the CIFAR ResNet does; return what changed.

    The rule, the same for every family: the first convolution becomes 3x3 with stride 1 (a larger
    kernel is replaced by a fresh 3x3 convolution with the same channels; a 3x3 one only loses its
    stride and keeps its weights), and a max-pool between the first and the second convolution
    becomes an Identity. For ResNet/ResNeXt/Wide ResNet this is exactly the CIFAR stem (conv1 3x3/1,
    no maxpool); DenseNet, ShuffleNet, SqueezeNet, GoogLeNet and AlexNet lose their stem's stride and
    pool the same way; MobileNet, EfficientNet, MNASNet, RegNet and Inception v3 keep their 3x3
    stem convolution without its stride; ConvNeXt and Swin get a 3x3/1 convolution in place of their
    4x4/4 patchify layer; VGG needs no change. A vision transformer and MaxViT fix their input size
    at construction (an error here): pass ``model.kwargs={image_size: N}`` / ``{input_size: [N, N]}``.
    """
    from torchvision.models import MaxVit, VisionTransformer

    if isinstance(model, VisionTransformer):
        raise ConfigError(
            "model.small_input=true cannot adapt a vision transformer's patch embedding; use "
            "model.small_input=false model.kwargs={image_size: <data.image_size>} (a multiple of the patch size)"
        )
    if isinstance(model, MaxVit):
        raise ConfigError(
            "model.small_input=true cannot adapt MaxViT, whose block sizes are fixed at construction; use "
            "model.small_input=false model.kwargs={input_size: [N, N]} with data.image_size=N a multiple of 224"
        )
    modules = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    changes = []
    path, conv = modules[convs[0]]
    if conv.kernel_size[0] > 3 or conv.kernel_size[1] > 3:
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
        _set_module(model, path, new)
        changes.append(f"{path} {_shape(conv)} -> {_shape(new)} (fresh weights)")
    elif conv.stride != (1, 1):
        before = _shape(conv)
        conv.stride = (1, 1)
        conv.padding = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
        changes.append(f"{path} {before} -> {_shape(conv)}")
    end = convs[1] if len(convs) > 1 else len(modules)
    for path, module in modules[convs[0] + 1 : end]:
        if isinstance(module, nn.MaxPool2d):
            _set_module(model, path, nn.Identity())
            changes.append(f"{path} max-pool -> Identity")
            break
    return changes


def _shape(conv: nn.Conv2d) -> str:
    return f"{conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]}"
