"""A small ResNet image classifier: the feature space of FD-cls and the judge of class-conditional samples.

Inception-v3 weights (for real FID) cannot be downloaded offline, so evaluation measures Fréchet distances in the
penultimate features of this classifier, trained by `train/classifier.py` on the same dataset ("FD-cls").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import ConfigMixin
from .hub import HubCheckpointMixin


@dataclass
class ClassifierConfig(ConfigMixin):
    num_classes: int = 10
    image_size: int = 32
    width: int = 32            # channels of the first stage; stages use width x (1, 2, 4, 8)
    # stride of the first convolution: 2 lets a 128-px classifier see every pixel at the cost of a 64-px one (its
    # 3 x 3 stem reads the full image; the stages after it run at half the resolution)
    stem_stride: int = 1
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def feature_dim(self) -> int:
        return 8 * self.width



def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(ch, ch), conv_bn(ch, ch))

    def forward(self, x):
        return x + self.body(x)


class Classifier(nn.Module, HubCheckpointMixin, library_name="hieratok", tags=["image-classification"]):
    """ResNet-9 layout (the DAWNBench CIFAR-10 design), width configurable; images in [-1, 1]."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            conv_bn(3, w, config.stem_stride),
            conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),
            conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, config.num_classes)
        self.channels_last = True  # a speed setting, not part of the config (see `embed`); False: the NCHW path

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 8 * width) penultimate features."""
        if self.channels_last and x.device.type == "cpu":
            # oneDNN's convolutions run faster on channels-last activations (the weights can stay as they are):
            # the 128-px classifier's training step 1.28x in bf16, 1.21x in fp32 on the AVX512-BF16 EPYC
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> logits; images of another size are resized to `config.image_size`."""
        size = self.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return self.head(self.embed(x))


class FeatureExtractor(nn.Module):
    """[0, 1] images -> classifier features, in the form torchmetrics' Fréchet distance expects."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.config.feature_dim

    @torch.no_grad()
    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        size = self.classifier.config.image_size
        if x01.shape[-1] != size:
            x01 = nn.functional.interpolate(x01, size=(size, size), mode="bilinear", antialias=True)
        return self.classifier.embed(x01.float() * 2 - 1).double()
