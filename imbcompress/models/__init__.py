"""Plain ``nn.Module`` models, a name -> factory registry, and timm / torchvision models behind one interface."""

from imbcompress.models.external import ExternalModel
from imbcompress.models.mobilenetv2 import InvertedResidual, MobileNetV2
from imbcompress.models.registry import MODEL_NAMES, ArchName, build_model, check_arch
from imbcompress.models.resnet_cifar import BasicBlock, CifarResNet

__all__ = [
    "MODEL_NAMES",
    "ArchName",
    "BasicBlock",
    "CifarResNet",
    "ExternalModel",
    "InvertedResidual",
    "MobileNetV2",
    "build_model",
    "check_arch",
]
