"""Testing a hypothesis: Welch's two-sample t-test on the two samples an experiment returns.

A ``@bench.test_hypothesis(alpha=0.05)`` function returns ``(a, b)``, two samples of a
measurement (e.g. a head's attention to the previous token on two kinds of prompt).
Welch's test does not assume the two have the same variance:

    t = (mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b)        (var: unbiased, ddof=1)
    dof = (var_a/n_a + var_b/n_b)^2 / ((var_a/n_a)^2/(n_a-1) + (var_b/n_b)^2/(n_b-1))

and the p-value is the probability of a |t| at least this large under the null hypothesis
of equal means, from Student's t with ``dof`` degrees of freedom (``scipy.stats.ttest_ind``
with ``equal_var=False``). The null is rejected when ``p < alpha``. scipy is imported only
when a test runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class HypothesisTest:
    """The outcome of Welch's t-test on samples a and b."""

    statistic: float  # t; positive when mean_a > mean_b
    p_value: float
    alpha: float
    reject_null: bool  # p_value < alpha
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    alternative: str = "two-sided"  # "less": mean_a < mean_b, "greater": mean_a > mean_b
    test: str = "welch_t"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        verdict = "reject" if self.reject_null else "keep"
        return (
            f"HypothesisTest(t={self.statistic:.3f}, p={self.p_value:.3g}: {verdict} the null at alpha={self.alpha}; "
            f"mean {self.mean_a:.4g} (n={self.n_a}) vs {self.mean_b:.4g} (n={self.n_b}))"
        )


def as_sample(values: Any, what: str) -> np.ndarray:
    """A 1-D float64 array of at least two finite observations, or an error naming the sample."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        sample = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be a sequence of numbers or a tensor, got {type(values).__name__}") from error
    if sample.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional (one number per observation), got shape {sample.shape}")
    if sample.size < 2:
        raise ValueError(f"{what} needs at least 2 observations for a t-test, got {sample.size}")
    if not np.isfinite(sample).all():
        raise ValueError(f"{what} holds NaN or infinite values; drop them before testing")
    return sample


def check_test_options(alpha: object, alternative: object) -> None:
    """Refuse a significance level outside (0, 1) or an unknown alternative."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; expected one of {', '.join(map(repr, ALTERNATIVES))}")


def welch_t_test(a: Any, b: Any, alpha: float = 0.05, alternative: str = "two-sided") -> HypothesisTest:
    """Welch's t-test of ``mean(a) == mean(b)``; see the module docstring."""
    check_test_options(alpha, alternative)
    from scipy import stats

    sample_a, sample_b = as_sample(a, "sample a"), as_sample(b, "sample b")
    outcome = stats.ttest_ind(sample_a, sample_b, equal_var=False, alternative=alternative)
    statistic, p_value = float(outcome.statistic), float(outcome.pvalue)
    return HypothesisTest(
        statistic=statistic,
        p_value=p_value,
        alpha=float(alpha),
        reject_null=bool(p_value < alpha),  # a NaN p (both samples constant and equal) keeps the null
        mean_a=float(sample_a.mean()),
        mean_b=float(sample_b.mean()),
        n_a=int(sample_a.size),
        n_b=int(sample_b.size),
        alternative=alternative,
    )


def split_samples(returned: Any) -> tuple[Any, Any]:
    """The two samples a ``test_hypothesis`` function returned, or an error saying what it must return."""
    if isinstance(returned, Sequence) and not isinstance(returned, str) and len(returned) == 2:
        return returned[0], returned[1]
    if isinstance(returned, torch.Tensor | np.ndarray) and returned.ndim == 2 and len(returned) == 2:
        return returned[0], returned[1]
    kind = type(returned).__name__
    size = f" of length {len(returned)}" if hasattr(returned, "__len__") else ""
    raise TypeError(f"a test_hypothesis function must return two samples (a, b), got {kind}{size}")
