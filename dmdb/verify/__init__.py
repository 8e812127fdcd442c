"""`dmdb verify`: check a fit's predictions by retraining, and measure the noise ceiling.

Every check trains real models with the experiment's own trainer under the removal
protocol of DESIGN.md: a model is trained on a fresh Bernoulli(alpha) subset of the
training set with the removed examples R excluded, and the datamodel predicts its
margin on target x as ``bias_x + alpha * sum(weight_xi for i not in R)``, plus
``alpha² * sum(φ_xab for a < b, neither in R)`` for a second-order fit (``--pairs``).

Counterfactuals
    For sampled targets: no removal ('none', k = 0), removal of the target's k most
    positive weights ('top') and of k random examples ('random', the control).
Brittleness
    For sampled targets whose estimated support set is finite: removal of the
    support set ('support') and of as many random examples ('random').
Noise ceiling
    Several seeds on each of many fresh masks: how much of a margin the mask
    determines at all, hence the best LDS any datamodel could reach.

Runs are stored with split 'verify' (fits and LDS never use them); what each was for
is recorded in ``runs.info`` and copied into ``verify_runs`` by SQL once trained, so an
interrupted check keeps its runs and the same call later continues where it stopped.

The package, one module a job:

fit
    The fit under test (:class:`FitUnderTest`): datamodels, alpha, the trainer of its
    runs, and the brittleness estimates.
plan
    The retraining plan: runs to train, their random streams and keys, the trainer,
    and training them into split 'verify'.
counterfactuals
    :func:`verify`: counterfactuals and brittleness, and their summaries.
noise_ceiling
    :func:`ceiling`: the noise ceiling.
"""

from dmdb.verify.counterfactuals import BrittlenessResult as BrittlenessResult
from dmdb.verify.counterfactuals import ConditionSummary as ConditionSummary
from dmdb.verify.counterfactuals import ModelScore as ModelScore
from dmdb.verify.counterfactuals import VerifyReport as VerifyReport
from dmdb.verify.counterfactuals import brittleness_results as brittleness_results
from dmdb.verify.counterfactuals import counterfactual_rows as counterfactual_rows
from dmdb.verify.counterfactuals import model_scores as model_scores
from dmdb.verify.counterfactuals import summarise_counterfactuals as summarise_counterfactuals
from dmdb.verify.counterfactuals import verify as verify
from dmdb.verify.fit import FitUnderTest as FitUnderTest
from dmdb.verify.fit import brittleness_estimates as brittleness_estimates
from dmdb.verify.fit import fit_alpha as fit_alpha
from dmdb.verify.fit import load_fit_under_test as load_fit_under_test
from dmdb.verify.fit import support_sizes as support_sizes
from dmdb.verify.noise_ceiling import CeilingReport as CeilingReport
from dmdb.verify.noise_ceiling import ceiling as ceiling
from dmdb.verify.noise_ceiling import ceiling_metrics as ceiling_metrics
from dmdb.verify.plan import Echo as Echo
from dmdb.verify.plan import Plan as Plan
from dmdb.verify.plan import build_trainer as build_trainer
from dmdb.verify.plan import choose_targets as choose_targets
from dmdb.verify.plan import done_keys as done_keys
from dmdb.verify.plan import fill_verify_runs as fill_verify_runs
from dmdb.verify.plan import plan_removals as plan_removals
from dmdb.verify.plan import run_plan as run_plan

__all__ = [
    "BrittlenessResult", "CeilingReport", "ConditionSummary", "Echo", "FitUnderTest",
    "ModelScore", "Plan", "VerifyReport", "brittleness_estimates", "brittleness_results",
    "build_trainer", "ceiling", "ceiling_metrics", "choose_targets", "counterfactual_rows",
    "done_keys", "fill_verify_runs", "fit_alpha", "load_fit_under_test", "model_scores",
    "plan_removals", "run_plan", "summarise_counterfactuals", "support_sizes", "verify",
]
