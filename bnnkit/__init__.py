"""bnnkit: train, evaluate, analyse and deploy binary neural networks in PyTorch."""
from ._registry import UnknownNameError
from .nn.layers import BinaryConv2d
from .methods import configure, get_method, list_methods, regularizer
from .models import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["BinaryConv2d", "UnknownNameError", "configure", "create_model", "get_method", "list_methods",
           "list_models", "register_model", "regularizer"]
