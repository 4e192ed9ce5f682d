"""Scoring: exact-match accuracy of answer spans, and the continual-learning summary.

Answer accuracy (niah, mqar) is teacher-forced: one forward pass over the whole sequence,
the prediction for byte t is argmax of the logits at position t − 1, and an answer counts as
correct only when every one of its bytes is predicted. For exact match this equals greedy
generation from the query (greedy decoding emits the answer iff each argmax, given the
correct bytes before it, is the right byte), at the cost of one forward pass. Also
reported: the fraction of answer bytes predicted (byte accuracy) and the mean cross-entropy
on the answer bytes (answer_nll, nats; the lr sweep's tie-break). Chance level: a guess
uniform over the answer's alphabet (10 digits) is right with probability 10^-value_len.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tasks import TaskBatch


@dataclass
class AnswerScore:
    """Counts over some answers: `correct` answers of `answers`, `byte_hits` of `bytes`
    answer bytes, `nll` the summed cross-entropy (nats) of the answer bytes."""
    correct: int = 0
    answers: int = 0
    byte_hits: int = 0
    bytes: int = 0
    nll: float = 0.0

    def __add__(self, o: "AnswerScore") -> "AnswerScore":
        return AnswerScore(self.correct + o.correct, self.answers + o.answers,
                           self.byte_hits + o.byte_hits, self.bytes + o.bytes, self.nll + o.nll)

    @property
    def accuracy(self) -> float:
        return self.correct / self.answers if self.answers else math.nan

    @property
    def byte_accuracy(self) -> float:
        return self.byte_hits / self.bytes if self.bytes else math.nan

    @property
    def answer_nll(self) -> float:
        return self.nll / self.bytes if self.bytes else math.nan

    def to_dict(self) -> Dict[str, Any]:
        return {"accuracy": _clean(self.accuracy), "byte_accuracy": _clean(self.byte_accuracy),
                "answer_nll": _clean(self.answer_nll), "answers": self.answers,
                "answer_bytes": self.bytes}


def _clean(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def answer_correct(logits: Tensor, input_ids: Tensor, answer_id: Tensor) -> Tensor:
    """Per answer (rows in order, answers in order within a row): True when the argmax of
    the logits predicts every byte of it. `logits [N, T, V]`, `input_ids`, `answer_id [N, T]`
    as in `TaskBatch`."""
    pred = logits[:, :-1].argmax(-1)
    hit = pred == input_ids[:, 1:]
    aid = answer_id[:, 1:]
    if bool((answer_id[:, 0] >= 0).any()):
        raise ValueError("answer_correct: byte 0 of a row cannot be an answer (nothing "
                         "predicts it)")
    n_ans = int(answer_id.max()) + 1 if answer_id.numel() else 0
    if n_ans <= 0:
        return torch.zeros(0, dtype=torch.bool)
    N = input_ids.shape[0]
    key = (torch.arange(N, device=aid.device)[:, None] * n_ans + aid)[aid >= 0]
    wrong = torch.zeros(N * n_ans, dtype=torch.long, device=aid.device)
    count = torch.zeros_like(wrong)
    wrong.index_add_(0, key, (~hit[aid >= 0]).long())
    count.index_add_(0, key, torch.ones_like(key))
    present = count > 0
    return (wrong == 0)[present].cpu()


def score_logits(logits: Tensor, batch: TaskBatch) -> AnswerScore:
    """The AnswerScore of logits `[N, T, V]` for `batch` (see the module docstring)."""
    ids, aid = batch.input_ids.to(logits.device), batch.answer_id.to(logits.device)
    correct = answer_correct(logits, ids, aid)
    mask = aid[:, 1:] >= 0
    lg = logits[:, :-1][mask].float()
    target = ids[:, 1:][mask]
    hits = int((lg.argmax(-1) == target).sum()) if len(target) else 0
    nll = float(F.cross_entropy(lg, target, reduction="sum")) if len(target) else 0.0
    return AnswerScore(int(correct.sum()), len(correct), hits, len(target), nll)


@torch.no_grad()
def score_model(model: nn.Module, batch: TaskBatch, batch_size: int = 16,
                device: Optional[torch.device] = None) -> AnswerScore:
    """The AnswerScore of `model` (anything whose `model(input_ids).logits` is `[N, T, V]`)
    on `batch`, in chunks of `batch_size` rows, in eval mode."""
    device = device or torch.device("cpu")
    was = model.training
    model.eval()
    total = AnswerScore()
    try:
        for i in range(0, len(batch), batch_size):
            part = batch.slice(i, i + batch_size)
            logits = model(part.input_ids.to(device)).logits
            total = total + score_logits(logits, part)
    finally:
        model.train(was)
    return total


# ------------------------------------------------------------------------ continual learning
def continual_summary(matrix: Sequence[Sequence[float]], lower_is_better: bool = True
                      ) -> Dict[str, Any]:
    """Summary of a K x K matrix R (R[i][j]: the metric on task j after training on tasks
    0..i; bits per byte, so lower is better by default):

      final_average   mean_j R[K-1][j]             (every task, after the whole stream)
      seen_average    [mean_{j<=i} R[i][j] for i]  (the tasks seen so far, after each stage)
      plasticity      mean_j R[j][j]               (each task right after training on it)
      forgetting      [R[K-1][j] - best_{j<=i<K-1} R[i][j] for j < K-1]: how much worse each
                      earlier task is at the end than at its best before the last stage
                      (> 0: forgotten; < 0: it kept improving; for higher-is-better metrics
                      the sign is flipped, so > 0 is forgetting either way)
      average_forgetting  their mean (None for one task)
    """
    R = [[float(v) for v in row] for row in matrix]
    K = len(R)
    if K == 0 or any(len(row) != K for row in R):
        raise ValueError("continual_summary: the matrix must be K x K with K >= 1")
    sign = 1.0 if lower_is_better else -1.0
    forgetting = []
    for j in range(K - 1):
        past = [R[i][j] for i in range(j, K - 1)]
        best = min(past) if lower_is_better else max(past)
        forgetting.append(sign * (R[K - 1][j] - best))
    mean = lambda xs: sum(xs) / len(xs) if xs else None          # noqa: E731
    return {"final_average": mean(R[K - 1]),
            "seen_average": [mean(R[i][:i + 1]) for i in range(K)],
            "plasticity": mean([R[j][j] for j in range(K)]),
            "forgetting": forgetting,
            "average_forgetting": mean(forgetting)}
