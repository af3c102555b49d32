"""Run named settings from ``labkit.experiments.sparse_soups_explorations.EXPLORATIONS`` and save their tables.

    .venv/bin/python reports/sparse_soups/explore.py NAME [NAME ...]

Each setting is the cpu preset + ``EXPLORE_BASE`` + the named overrides; it writes
``reports/sparse_soups/explorations/<name>_{final,comparison,phases}.csv`` and a JSON of its config and timings.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

from labkit.experiments import sparse_soups as experiment
from labkit.experiments.sparse_soups_explorations import EXPLORATIONS, EXPLORE_BASE

OUT = Path(__file__).parent / "explorations"

for name in sys.argv[1:]:
    overrides = {**EXPLORE_BASE, **EXPLORATIONS[name]}
    cfg = experiment.configure("cpu", overrides)
    start = time.perf_counter()
    results = experiment.run(cfg, progress=False)
    OUT.mkdir(parents=True, exist_ok=True)
    results.final.to_csv(OUT / f"{name}_final.csv", index=False)
    results.phases.to_csv(OUT / f"{name}_phases.csv", index=False)
    experiment.comparison(results.final).to_csv(OUT / f"{name}_comparison.csv", index=False)
    meta = {"name": name, "overrides": overrides, "config": dataclasses.asdict(cfg),
            "wall_seconds": time.perf_counter() - start, "timings": results.timings}
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    print(name, "done in", round(meta["wall_seconds"]), "s", flush=True)
