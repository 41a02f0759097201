"""Data pipelines for CIFAR-10/100, ImageNet and tiny-imagenet as the SiMaN and BiPer authors ran them.

`build_loader` is the entry point; see docs/data.md for the backends and their speed.
"""
from ._build import BACKENDS, build_loader, read_source
from ._errors import DataError
from ._info import CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, DatasetInfo
from ._lighting import Lighting
from ._loader import ShardedLoader
from ._transforms import build_transform

__all__ = ["BACKENDS", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "DATASETS", "DataError", "DatasetInfo", "Lighting",
           "ShardedLoader", "build_loader", "build_transform", "read_source"]
