"""GateSkip (Laitenberger et al., arXiv 2510.13876): learned residual gates decide which tokens skip which branch,
reproduced under the protocol (:mod:`labkit.protocol`).

Every arm starts from the same small decoder LM, pretrained here from a ``transformers`` config, saved with
``save_pretrained`` and reloaded with ``from_pretrained`` (as the paper fine-tunes a pretrained model), and gets the
same fine-tuning schedule (``finetune_steps``; where to stop in it is tuned on validation):

- ``gateskip``: vector gates (bias 5, std 0.01, detached input), L2 gate penalty of weight λ, training budget ramped
  0 -> ``train_skip_end``; evaluated with the per-branch batch quantile of gate importance;
- ``gateskip + random rank``: the same model, tokens ranked at random (isolates the learned ranking);
- ``random_skip``: fine-tuned with random hard skipping on a ramp (no gates), evaluated with random ranking;
- ``dense``: fine-tuned without skipping (the quality reference);
- ``shortgpt`` and ``uls``: static branch / layer removal on a dense fine-tune (ShortGPT block influence on
  calibration batches; Unified Layer Skipping's evenly spaced middle layers).

Protocol: three disjoint splits (training stream, validation, test). Each family is tuned on validation over a grid
of the same size (GateSkip: gate lr x λ; random skip: lr x ramp end; dense, ShortGPT and ULS: the dense lr; each
times the stopping points ``finetune_stops``), on ``tune_seeds`` seeds (0 ..); the frozen choices then run on test
with ``seeds`` fresh seeds (100 .., pretraining included). Convergence is checked by budget: every trained choice
(the dense fine-tunes, GateSkip, random skip) is rerun on the first test seed at 1x and at ``budget_factor`` x its
schedule, both scored on validation (:func:`~labkit.experiments.gateskip.arms.budget_jobs`).
Tasks: ``text`` (byte-level LM on pinned CPython stdlib sources: bits per byte) and ``cumsum`` (running sums mod 10:
exact match teacher-forced and of chains generated with a KV cache). Compute saved is reported as the paper's
token x branch fraction and as FLOPs actually executed in compact execution, at 90 % and 95 % of dense quality.

Rooms: ``config`` (Config, PRESETS, seeds), ``data`` (the tasks and their metrics), ``arms`` (fine-tuning, the
choices on validation, ``compute``), ``claims`` (the claims as data, convergence, health, verdicts) and ``summary``
(``judge``, the verdict and headline metrics, the scores the notebook shows).
"""

from labkit.experiments import Experiment
from labkit.experiments.gateskip import arms, claims, summary
from labkit.experiments.gateskip.config import PRESETS, TASKS, TEST_SEED_OFFSET, Config, test_seeds, tune_seeds
from labkit.experiments.gateskip.summary import headline_metrics, verdict_lines, verdict_text

EXPERIMENT = Experiment("gateskip", Config, PRESETS, arms.compute, summary.judge)
configure = EXPERIMENT.configure

__all__ = [
    "EXPERIMENT",
    "PRESETS",
    "TASKS",
    "TEST_SEED_OFFSET",
    "Config",
    "arms",
    "claims",
    "configure",
    "headline_metrics",
    "summary",
    "test_seeds",
    "tune_seeds",
    "verdict_lines",
    "verdict_text",
]
