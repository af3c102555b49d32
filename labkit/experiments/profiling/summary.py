"""What the profiling tour concludes from its computed tables: the counter against the closed form, what torch's
plain counter misses, and attention's growing share."""

from __future__ import annotations

from labkit.experiments import Computed, Results
from labkit.experiments.profiling.config import Config


def judge(cfg: Config, computed: Computed) -> Results:
    """The tour's Results: its computed tables as they are (``flops``, ``breakdown``, ``throughput``, ``trace``,
    ``block``); the conclusions are read by :func:`verdict_text` and :func:`headline_metrics`."""
    return Results(cfg, dict(computed.tables), computed)


def verdict_text(results: Results) -> str:
    """One line: exact or not, what the plain counter missed, attention's share at the shortest and longest length."""
    flops = results.flops
    exact = bool((flops.counted == flops.analytic).all())
    missed = 1 - flops.plain_flop_counter / flops.counted
    attention = results.breakdown[results.breakdown.component == "attention"].set_index("seq_len").share
    return (f"count_flops {'matches' if exact else 'does NOT match'} the closed form at every length; "
            f"plain FlopCounterMode missed {100 * missed.min():.0f}-{100 * missed.max():.0f} % of FLOPs on "
            f"{results.block.device.iloc[0]}; attention's share grew from {100 * attention.iloc[0]:.0f} % "
            f"(s={attention.index[0]}) to {100 * attention.iloc[-1]:.0f} % (s={attention.index[-1]})")


def headline_metrics(results: Results) -> dict[str, float]:
    """Numbers a rerun reproduces: parameters, exactness, GFLOPs and the plain counter's miss per length."""
    flops = results.flops
    missed = 1 - flops.plain_flop_counter / flops.counted
    return {"n_params": int(results.block.n_params.iloc[0]),
            "flops_match_closed_form": float((flops.counted == flops.analytic).all()),
            **{f"gflops_s{s}": c / 1e9 for s, c in zip(flops.seq_len, flops.counted, strict=True)},
            **{f"plain_counter_missed_s{s}": m for s, m in zip(flops.seq_len, missed, strict=True)}}
