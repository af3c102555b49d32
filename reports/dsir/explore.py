"""Explorations around the DSIR cpu preset: where does DSIR separate from heuristic classification and random?

Runs the experiment module with overrides (bigram LM downstream only) and writes one CSV per setting plus a
summary table to reports/dsir/explorations/. Usage: .venv/bin/python reports/dsir/explore.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from labkit.experiments import dsir as experiment

OUT = Path(__file__).parent / "explorations"
SEEDS = [0]  # one seed: the explorations ran beside the cpu-preset report on a loaded machine
SETTINGS = {
    "k1000": {"budget_k": 1000, "methods": ["random", "dsir", "heuristic"]},
    "k10000": {"budget_k": 10000, "methods": ["random", "dsir", "heuristic"]},
    "nfit50": {"n_fit": 50, "methods": ["random", "dsir", "heuristic"]},
    "temperature16": {"temperature": 16.0, "methods": ["dsir"]},
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = experiment.configure("cpu", {"downstream": "bigram", "seeds": SEEDS})
    prepared = experiment.prepare(base)
    rows = []
    for name, overrides in SETTINGS.items():
        cfg = experiment.configure("cpu", {"downstream": "bigram", "seeds": SEEDS, **overrides})
        start = time.perf_counter()
        scores = experiment.run(cfg, prepared, progress=False).scores
        scores.to_csv(OUT / f"{name}.csv", index=False)
        for method, group in scores.groupby("method", sort=False):
            rows.append(
                {
                    "setting": name,
                    "method": method,
                    "kl_reduction": group.kl_reduction.mean(),
                    "bigram_nats_per_token": group.bigram_nats_per_token.mean(),
                    "label_precision": group.label_precision.mean(),
                    "cells": len(group),
                }
            )
        if {"dsir", "heuristic"} <= set(scores.method):
            for comparison in (("dsir", "random"), ("dsir", "heuristic")):
                gap = experiment.paired_gaps(scores, *comparison).set_index("target").loc["all"]
                rows.append(
                    {
                        "setting": name,
                        "method": f"{comparison[0]} − {comparison[1]} (paired)",
                        "bigram_nats_per_token": gap.mean_diff,
                        "ci_low": gap.low,
                        "ci_high": gap.high,
                        "cells": int(gap.n),
                    }
                )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    pd.DataFrame(rows).to_csv(OUT / "summary.csv", index=False)
    print(pd.DataFrame(rows).round(3).to_string())


if __name__ == "__main__":
    main()
