"""The paper's evaluations at small scale, always comparing Hope with a same-size
Transformer: needle in a haystack, multi-query associative recall and continual learning
(`nlcore eval --task niah|mqar|continual`).

    tasks.py     deterministic byte-level task generators (seeded random.Random, never the
                 global RNG): niah_sample / niah_batch, mqar_sample / mqar_batch,
                 continual_tasks; TaskBatch (input ids + where the answers are)
    scoring.py   exact-match answer accuracy (teacher-forced argmax of every answer byte),
                 the continual-learning summary (average, plasticity, forgetting)
    training.py  the models by name ("hope", "transformer", or register_model), the
                 shared training loop `fit`, AdamW / M3
    runner.py    the runners: train every model with the same budget and a small learning
                 rate sweep, pick the best rate on held-out data, score on test data, print
                 a table, write JSON and a heat map
    plot.py      heat maps (matplotlib PNG when installed, else a plain SVG)
"""
from .runner import EvalArgs, run_continual, run_mqar, run_niah, run_task
from .scoring import AnswerScore, answer_correct, continual_summary, score_logits, score_model
from .tasks import (ContinualTask, Sample, TaskBatch, continual_tasks, mqar_batch,
                    mqar_sample, niah_batch, niah_sample, rng)
from .training import EvalError, build_model, fit, register_model

__all__ = ["EvalArgs", "run_task", "run_niah", "run_mqar", "run_continual",
           "AnswerScore", "answer_correct", "score_logits", "score_model",
           "continual_summary", "Sample", "TaskBatch", "ContinualTask", "niah_sample",
           "niah_batch", "mqar_sample", "mqar_batch", "continual_tasks", "rng", "EvalError",
           "build_model", "fit", "register_model"]
