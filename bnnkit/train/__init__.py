"""Training, evaluation and two-stage BiPer, laid out like torchvision's references/classification:
`train_one_epoch`, `evaluate`, `load_data` and `main` (here `train`, which runs one stage or both).

    from bnnkit.train import train, load_recipe
    train(load_recipe("recipes/cifar10/siman_resnet20.yaml") | {"data_path": "data/", "epochs": 1})

The procedure is the authors' (REFERENCE.md §3-§4); docs/training.md and docs/quirks.md explain it.
"""
from ._checkpoint import atomic_save, is_bnnkit, model_from_checkpoint, read_checkpoint, rng_state, set_rng_state
from ._config import ConfigError, all_keys, find_recipe, list_recipes, load_recipe, merge, parse_set, resolve, script_defaults
from ._data import load_data
from ._engine import NonFiniteLossError, evaluate, train_one_epoch
from ._evaluate import evaluate_checkpoint, load_any
from ._main import RunExistsError, main, train_stage
from ._metrics import flip_ratio, quantization_error, sign_bits
from ._runlog import holds_run
from ._teacher import check_teacher
from ._optim import build_optimizer, lr_per_epoch, param_groups

train = main

__all__ = ["all_keys", "ConfigError", "find_recipe", "NonFiniteLossError", "RunExistsError", "atomic_save", "build_optimizer", "check_teacher",
           "evaluate", "evaluate_checkpoint", "flip_ratio", "holds_run", "is_bnnkit", "list_recipes", "load_any", "load_data",
           "load_recipe", "lr_per_epoch", "main", "merge", "model_from_checkpoint", "param_groups", "parse_set",
           "quantization_error", "read_checkpoint", "resolve", "rng_state", "script_defaults", "set_rng_state",
           "sign_bits", "train", "train_one_epoch", "train_stage"]
