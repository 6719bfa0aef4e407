"""Tasks: many prompts of one kind with corrupted twins, an answer and a foil per example, and
the metric that says how well a model does them (``Task``), with two seeded generators,
``ioi`` (indirect object identification, "ABC" twins) and ``induction`` (repeated random
tokens, a changed first half).

The tasks layer sits above the models and below the tools: it runs plain forward passes, and
the tools patch activations between a task's clean and corrupted runs.
"""

from arrakis.tasks.induction import induction
from arrakis.tasks.ioi import ioi
from arrakis.tasks.metrics import METRICS
from arrakis.tasks.task import Task

__all__ = ["METRICS", "Task", "induction", "ioi"]
