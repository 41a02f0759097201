"""Knowledge distillation from a float teacher's logits, for any method (ReActNet's DistributionLoss).

    loss = distribution_loss(student(images), teacher(images))   # the teacher's logits without grad

bnnkit.train runs the teacher (`--teacher`, `--loss kd|ce+kd`); this module is only the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def distribution_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """L = (1/N) sum_n sum_k -softmax(t_n)_k log_softmax(s_n)_k: the soft-target cross-entropy at
    temperature 1, no label term (= mean_n KL(p_t || p_s) + H(p_t): F.kl_div's 'batchmean' has the
    same gradient, a different value). dL/ds_n = (softmax(s_n) - softmax(t_n)) / N.
    Like the authors' DistributionLoss, teacher logits that require grad are an error (ValueError):
    run the teacher under torch.no_grad() or pass them detached.
    Reference: Liu et al., "ReActNet", ECCV 2020, Sec. 4.1; liuzechun/ReActNet utils/KD_loss.py."""
    if teacher_logits.requires_grad:
        raise ValueError("distribution_loss: the teacher's logits require grad; detach them "
                         "(or run the teacher under torch.no_grad())")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"distribution_loss: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits must both be [N, K]")
    log_p = F.log_softmax(student_logits, dim=1)
    q = F.softmax(teacher_logits, dim=1)
    return -torch.bmm(q.unsqueeze(1), log_p.unsqueeze(2)).mean()
