"""Plain ``nn.Module`` models and a name -> factory registry."""

from imbcompress.models.mobilenetv2 import InvertedResidual, MobileNetV2
from imbcompress.models.registry import MODEL_NAMES, build_model
from imbcompress.models.resnet_cifar import BasicBlock, CifarResNet

__all__ = ["MODEL_NAMES", "BasicBlock", "CifarResNet", "InvertedResidual", "MobileNetV2", "build_model"]
