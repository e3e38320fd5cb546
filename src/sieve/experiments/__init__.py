"""Online evaluation: assignment, analysis, sequential tests, power, interleaving.

- `assignment`: deterministic salted-hash assignment, layers, holdouts, shadows;
- `analysis`: per-arm metrics, z/Welch tests, SRM, CUPED, a verdict in words;
- `sequential`: always-valid p-values (mSPRT) and confidence sequences;
- `design`: sample size, power and minimum detectable effect;
- `interleaving`: team-draft interleaving and its sign test;
- `compose`: which experiments of different layers can run side by side;
- `shadows`: each shadow arm's lists against the served ones;
- `cuped`: variance reduction with a pre-period covariate;
- `simulate`: vectorised simulations that check all of the above.
"""

from sieve.experiments.analysis import (
    AnalysisConfig,
    ArmReport,
    Comparison,
    ExperimentReport,
    Metric,
    SampleRatioCheck,
    TestResult,
    analyze,
    sample_ratio_check,
    two_proportion_pvalues,
    two_proportion_ztest,
    welch_ttest,
)
from sieve.experiments.assignment import (
    Assigner,
    Assignment,
    AssignmentBatch,
    Experiment,
    Layer,
    Variant,
    hash_uniform,
    hash_uniforms,
)
from sieve.experiments.cuped import CupedResult, cuped_adjust, cuped_theta, pooled_theta
from sieve.experiments.design import (
    mde_from_se,
    mde_means,
    mde_proportions,
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
)
from sieve.experiments.interleaving import (
    Interleaving,
    InterleavingResult,
    credit,
    credit_many,
    interleaving_test,
    request_rng,
    sign_test_pvalues,
    team_draft,
    team_draft_batch,
)
from sieve.experiments.sequential import (
    MSPRT,
    SequentialConfig,
    always_valid_pvalues,
    always_valid_pvalues_means,
    always_valid_pvalues_proportions,
    confidence_sequence,
    msprt_log_lr,
)

__all__ = [
    "MSPRT",
    "AnalysisConfig",
    "ArmReport",
    "Assigner",
    "Assignment",
    "AssignmentBatch",
    "Comparison",
    "CupedResult",
    "Experiment",
    "ExperimentReport",
    "Interleaving",
    "InterleavingResult",
    "Layer",
    "Metric",
    "SampleRatioCheck",
    "SequentialConfig",
    "TestResult",
    "Variant",
    "always_valid_pvalues",
    "always_valid_pvalues_means",
    "always_valid_pvalues_proportions",
    "analyze",
    "confidence_sequence",
    "credit",
    "credit_many",
    "cuped_adjust",
    "cuped_theta",
    "hash_uniform",
    "hash_uniforms",
    "interleaving_test",
    "mde_from_se",
    "mde_means",
    "mde_proportions",
    "msprt_log_lr",
    "pooled_theta",
    "power_means",
    "power_proportions",
    "request_rng",
    "sample_ratio_check",
    "sample_size_means",
    "sample_size_proportions",
    "sign_test_pvalues",
    "team_draft",
    "team_draft_batch",
    "two_proportion_pvalues",
    "two_proportion_ztest",
    "welch_ttest",
]
