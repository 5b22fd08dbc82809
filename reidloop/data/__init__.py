"""Re-ID data: dataset readers, image loading, transforms and the P×K identity sampler."""
from .cuhk01 import read_cuhk01
from .cuhk03 import read_cuhk03
from .images import ReidImageDataset, load_image, relabel, verify_images
from .market import read_dukemtmc, read_market1501, read_market_style
from .records import DatasetError, ImageRecord, ReidSplits
from .registry import build_splits, split_identities
from .sampler import PKSampler
from .transforms import build_transforms

__all__ = [
    "DatasetError", "ImageRecord", "ReidSplits", "ReidImageDataset", "PKSampler",
    "build_splits", "build_transforms", "load_image", "read_cuhk01", "read_cuhk03",
    "read_dukemtmc", "read_market1501", "read_market_style", "relabel", "split_identities",
    "verify_images",
]
