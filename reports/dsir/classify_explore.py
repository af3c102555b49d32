"""DSIR downstream classification at a small honest CPU scale (one run; numbers go to reports/dsir/explorations.md).

cpu preset + the classification track only (the main grid is the committed cpu report): 3 targets × {random, DSIR,
heuristic} × 3 seeds, continued pretraining of one base byte LM, linear probe of each target's domain tags.
Usage: nohup nice -n 5 .venv/bin/python reports/dsir/classify_explore.py OUT_DIR &
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import labkit
from labkit.experiments import dsir as experiment
from labkit.experiments.dsir_classify import classify_held, classify_summary, run_classification

OVERRIDES = {
    "classify": True,
    "classify_targets": ["foldoc-networking", "gcide-botany", "man2-syscalls"],
    "classify_methods": ["random", "dsir", "heuristic"],
    "classify_seeds": [0, 1, 2],
    "threads": 1,
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = experiment.configure("cpu", OVERRIDES)
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    prepared = experiment.prepare(cfg, progress=False)
    df, skipped = run_classification(cfg, prepared, progress=True)
    wall, cpu, load1 = time.perf_counter() - t0, time.process_time() - c0, os.getloadavg()
    df.to_csv(out / "classify_cpu.csv", index=False)
    summary = classify_summary(df)
    summary.to_csv(out / "classify_cpu_summary.csv", index=False)
    held = classify_held(df)
    meta = {
        "labkit": labkit.__file__,
        "config": experiment.config_dict(cfg),
        "skipped": skipped,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_start": load0,
        "loadavg_end": load1,
        "held": held,
    }
    (out / "classify_cpu_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(summary.round(3).to_string())
    print(held)
    print(json.dumps({k: v for k, v in meta.items() if k != "config"}, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/dsir/explorations"))
