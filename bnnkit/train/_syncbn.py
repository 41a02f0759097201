"""--sync_bn: batch statistics over the global batch of all processes.

On GPUs this is torch.nn.SyncBatchNorm. PyTorch's SyncBatchNorm refuses CPU tensors, so CPU (gloo)
processes use GlobalBatchNorm below: the same statistics (two-pass: global mean, then global biased
variance for normalising and the unbiased one for the running estimate), gathered with the
autograd-aware torch.distributed.nn.functional.all_reduce so that gradients flow to every process's
samples. Its state_dict keys are BatchNorm's, so checkpoints do not depend on the option.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn


# The autograd-aware collective we need is marked deprecated in favour of a private module; keep quiet about it.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D-5D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        live = dist.is_available() and dist.is_initialized()
        if live:
            from torch.distributed.nn.functional import all_reduce
        else:
            all_reduce = lambda t: t  # noqa: E731  (one process: the statistics of its batch, computed the same way)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Sums in float64, so that the statistics of a batch split over processes round to the same float32
        # values as those of the whole batch in one process (then the forward pass is the same, bit for bit).
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.to(x.dtype).reshape(shape)
        var = all_reduce(centred.pow(2).sum(dims, dtype=torch.float64)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / (n - 1)).to(x.dtype), alpha=m)
        y = centred / torch.sqrt(var + self.eps).to(x.dtype).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def convert_sync_bn(model: nn.Module, device: torch.device, distributed: bool = True) -> nn.Module:
    """Every BatchNorm of `model` normalises over the global batch (in place; returns the model)."""
    if device.type == "cuda" and distributed:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new.to(next(child.buffers(), torch.empty(0)).device))
        else:
            convert_sync_bn(child, device, distributed)
    return model
