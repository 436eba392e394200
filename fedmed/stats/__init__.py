"""Federated statistics: every function takes lazy inputs and returns a lazy result.

Statistics computed together with ``fm.compute(...)`` share their map tasks:
``fm.compute(fm.stats.mean(x), fm.stats.std(x), fm.stats.ttest_ind(a, b))``
is one request per server. Formulas and round counts: ``docs/statistics.md``.
"""

from .contingency import chi2_contingency
from .cox import coxph
from .descriptive import corr, cov, describe, mean, pearson, sem, std, var
from .distribution import histogram, median, quantile, reconstruct
from .meta import slma
from .rank import mannwhitneyu, wilcoxon
from .regression import glm, logit, ols, poisson
from .survival import kaplan_meier, logrank
from .ttest import ttest_1samp, ttest_ind, ttest_rel

__all__ = [
    "mean", "var", "std", "sem", "describe", "cov", "pearson", "corr",
    "ttest_ind", "ttest_1samp", "ttest_rel", "chi2_contingency", "ols", "logit", "poisson", "glm",
    "quantile", "median", "histogram", "reconstruct", "mannwhitneyu", "wilcoxon",
    "kaplan_meier", "logrank", "coxph",
]
__all__ += ["slma"]
