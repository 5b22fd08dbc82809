"""Re-ID network (DRAL Sec. 3.1), backbones and local weight loading."""
from .backbones import BACKBONE_NAMES, build_backbone
from .reid_net import ReidNet, ReidOutput, build_model, load_checkpoint, save_checkpoint
from .weights import LoadReport, WeightsError, imagenet_mobilenet_v2_path, load_backbone_weights, read_state_dict

__all__ = [
    "BACKBONE_NAMES", "build_backbone", "ReidNet", "ReidOutput", "build_model", "load_checkpoint",
    "save_checkpoint", "LoadReport", "WeightsError", "imagenet_mobilenet_v2_path", "load_backbone_weights",
    "read_state_dict",
]
