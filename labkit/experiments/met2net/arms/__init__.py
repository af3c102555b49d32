"""Met²Net's arms, all with the same optimiser, data, seeds and early-stopping rule, on locally generated fields whose
variables differ in statistics and scale (:mod:`labkit.data.fields`):

- ``persistence`` (the last input frame repeated) and ``climatology`` (the training mean per grid point);
- ``stacked``: SimVP-like, variables stacked as channels, end-to-end;
- ``stacked_wide``: the stacked model widened until its forward FLOPs reach Met²Net's (capacity control);
- ``pervar_e2e``: Met²Net's network (per-variable enc/dec + variable attention) trained end-to-end;
- ``pervar_explicit``: the same network trained explicitly in two stages (autoencoder, then latent translator);
- ``met2net``: the same network trained with the implicit two-stage scheme (:class:`labkit.stage.ImplicitTwoStage`),
  its EMA momentum chosen on validation among ``cfg.momentums``;
- ``met2net_noattn``: Met²Net without cross-variable attention (variables never interact), same momentum.

``models`` builds the forecasters, ``training`` trains one arm (and stretches the budget for the convergence check),
``runs`` maps every arm x seed over :func:`labkit.jobs.run_jobs` into the computed tables (:func:`compute`).
"""

from labkit.experiments.met2net.arms.models import build_model, forward_flops, wide_factor
from labkit.experiments.met2net.arms.runs import FORECAST_PREFIX, chosen_momentum, compute, forecast_windows
from labkit.experiments.met2net.arms.training import ArmRun, longer_budget, train_arm

__all__ = ["FORECAST_PREFIX", "ArmRun", "build_model", "chosen_momentum", "compute", "forecast_windows",
           "forward_flops", "longer_budget", "train_arm", "wide_factor"]
