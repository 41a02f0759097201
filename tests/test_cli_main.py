"""The command line itself: subcommands, help, `python -m bnnkit`, and `bnnkit summary` wiring."""
from __future__ import annotations

from tests._train_fixtures import cli, cli_subprocess


def test_help_lists_the_subcommands():
    code, out, _ = cli("--help")
    assert code == 0
    for name in ("train", "eval", "qe", "summary"):
        assert name in out
    code, _, _ = cli()
    assert code == 2


def test_train_help_shows_the_authors_flags():
    code, out, _ = cli("train", "--help")
    assert code == 0
    for flag in ("--model", "--dataset", "--data_path", "--epochs", "--lr", "-b", "-bt", "--lr_type", "--warm_up",
                 "--weight_decay", "--momentum", "--freq", "--tau", "--tau_min", "--tau_max", "--use_dali", "-e",
                 "--resume", "--seed", "--gpus", "--workers", "--print_freq", "--results_dir", "--save",
                 "--checkpoint_every", "--amp", "--sync_bn", "--set"):
        assert f" {flag}" in out, flag


def test_argparse_errors_exit_2_without_traceback():
    code, _, err = cli("train", "--epochs", "many", "--data_path", "x")
    assert code == 2 and "Traceback" not in err and "epochs" in err


def test_python_dash_m_and_summary():
    done = cli_subprocess("summary", "resnet20_1w1a", "--method", "biper", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resnet20_1w1a" in done.stdout


def test_command_line_flags_override_both_stages_of_a_two_stage_recipe():
    from bnnkit.cli import recipe_with_overrides
    from bnnkit.train._config import stages_of

    raw = recipe_with_overrides("recipes/cifar10/biper_resnet20.yaml", {"epochs": 2, "lr": 0.5}, ["stage2.lr=0.25"])
    stage1, stage2 = stages_of(raw)
    assert (stage1["epochs"], stage2["epochs"]) == (2, 2)
    assert (stage1["lr"], stage2["lr"]) == (0.5, 0.25)
    assert (stage1["weight_decay"], stage2["weight_decay"]) == (0.0016, 0.00016)  # untouched keys keep the recipe's
