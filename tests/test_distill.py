"""bnnkit.distill.distribution_loss against the authors' DistributionLoss (../shared/fixtures/methods/kd,
METHODS.md §4.9), and the trainer's teacher (`--teacher`, `--teacher_weights`, `--loss`)."""
import pytest
import torch
import torch.nn.functional as F

from bnnkit.distill import distribution_loss
from bnnkit.errors import CheckpointError, ConfigError
from bnnkit.train import resolve
from bnnkit.train._teacher import build_teacher
from tests.test_golden import _golden
from tests.test_golden_methods import METHODS_DIR

KD_CASES = sorted((METHODS_DIR / "kd").glob("*.pt"))


def test_the_kd_cases_are_present():
    assert {p.stem for p in KD_CASES} >= {"kd_imagenet_b4_s41", "kd_small_b8_s42"}


@pytest.mark.parametrize("path", KD_CASES, ids=lambda p: p.stem)
def test_distribution_loss_equals_the_authors(path):
    golden = _golden()
    case = torch.load(path, weights_only=True)
    student = case["student"].clone().requires_grad_(True)
    loss = distribution_loss(student, case["teacher"])
    loss.backward()
    assert abs(float(loss.detach()) - float(case["loss"])) / abs(float(case["loss"])) <= golden.TOLERANCE["loss"]
    assert golden.relative_error(student.grad, case["grad"]) <= golden.TOLERANCE["grad"]


def test_distribution_loss_is_soft_cross_entropy_with_kl_divs_gradient():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7)
    loss = distribution_loss(s, t)
    q = F.softmax(t, 1)
    entropy = -(q * F.log_softmax(t, 1)).sum(1).mean()
    kl = F.kl_div(F.log_softmax(s, 1), q, reduction="batchmean")
    assert torch.allclose(loss, kl + entropy, atol=1e-6) and not torch.allclose(loss, kl)
    loss.backward()
    assert torch.allclose(s.grad, (F.softmax(s, 1) - q).detach() / 5, atol=1e-7)
    with pytest.raises(ValueError, match="require grad"):
        distribution_loss(s, t.requires_grad_(True))


def _cfg(**kw):
    return resolve({"method": "reactnet", "dataset": "cifar10", **kw})


def test_loss_modes_and_their_errors(tmp_path):
    assert _cfg()["loss"] == "kd" and _cfg(loss="ce")["loss"] == "ce"
    with pytest.raises(ConfigError, match="choose ce, kd or ce"):
        _cfg(loss="mse")
    with pytest.raises(ConfigError, match="pass --teacher"):
        resolve({"method": "ste", "loss": "ce+kd"})
    with pytest.raises(ConfigError, match="no such file"):
        _cfg(teacher_weights=str(tmp_path / "missing.pth"))


def test_a_torchvision_teacher_from_a_weights_file_is_frozen_in_eval(tmp_path):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "t.pth")
    teacher = build_teacher(_cfg(teacher="resnet18", teacher_weights=str(tmp_path / "t.pth")), 10, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for (k, a), b in zip(net.state_dict().items(), teacher.state_dict().values()):
        assert torch.equal(a, b), k
    assert build_teacher(_cfg(loss="ce", teacher="resnet18"), 10, torch.device("cpu")) is None
    with pytest.raises(CheckpointError, match="not a resnet34 with 10 classes"):
        build_teacher(_cfg(teacher="resnet34", teacher_weights=str(tmp_path / "t.pth")), 10, torch.device("cpu"))


def test_teacher_names_and_pretrained_classes_are_checked():
    with pytest.raises(ConfigError, match="neither a checkpoint file nor a torchvision"):
        build_teacher(_cfg(teacher="nosuchnet"), 10, torch.device("cpu"))
    with pytest.raises(ConfigError, match="1000 classes, this dataset 10"):  # before any download
        build_teacher(_cfg(teacher="resnet34"), 10, torch.device("cpu"))
    with pytest.raises(ConfigError, match="no such file"):  # the same error as the CLI's parse-time check
        build_teacher(_cfg(teacher="runs/missing.pt"), 10, torch.device("cpu"))


def test_a_teacher_with_loss_ce_is_reported_unused(tmp_path):
    """A recipe's teacher run with --loss ce trains on the labels only; the log says the teacher is
    not used instead of leaving the user to think it distils."""
    import torchvision

    from tests._train_fixtures import CIFAR, cli_subprocess

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "t.pth")
    run = cli_subprocess("train", "--method", "reactnet", "--model", "birealnet20", "--data_path", CIFAR,
                         "--subset", "32", "--val_subset", "32", "-b", "32", "--epochs", "1", "--workers", "0",
                         "--threads", "1", "--loss", "ce", "--teacher", "resnet18", "--teacher_weights", tmp_path / "t.pth",
                         "--results_dir", tmp_path, "--save", "run", "--set", "tensorboard=false", "--set", "figures=false")
    assert run.returncode == 0, run.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "--teacher resnet18 is not used: --loss ce trains on the labels alone" in log
    assert "distilling from" not in log
