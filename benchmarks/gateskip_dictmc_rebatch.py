"""A control of the GateSkip SmolLM2 report's dictmc premise: the same gates and questions, scored in another order.

Under batch-scope skipping the 5 % budget is a quantile over each forward's batch (16 questions x 4 options), so
whether a question is answered right depends on its batchmates too, which per-question intervals do not see. The
report's independent review found the 200 questions it shares with the previous run answered differently there
(learned ranking 0.42 then, 0.54 now, same gates). This script scores the report's 800 validation questions (seed 1)
shuffled by ``--order-seed`` with the report's chosen gates (``reports/gateskip/cpu/artefacts.safetensors``), learned
and random ranking at the report's premise budget, and sets them beside the report's own per-question rows: the
ranking edge in each order, and how far each arm's accuracy moves with the order alone.

    .venv/bin/python benchmarks/gateskip_dictmc_rebatch.py     # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from labkit import jobs
from labkit.experiments.gateskip import data
from labkit.experiments.gateskip.arms import premise
from labkit.experiments.gateskip.config import PRESETS, Config
from labkit.protocol import student_t_ci

REPORT = Path("reports/gateskip/cpu")
ARMS = {"gateskip": "gate", "gateskip + random rank": "random"}  # the report's arm names and their rankings


def shuffled(cfg: Config, order_seed: int) -> tuple[list, np.ndarray]:
    """The report's questions and the order they are scored in (``order[i]``: the report's index of row i)."""
    questions = data.dictionary_questions(cfg.mc_questions, cfg.premise_seed)
    order = np.random.default_rng(order_seed).permutation(len(questions))
    return [questions[i] for i in order], order


def score(job: tuple[Config, str, list]) -> np.ndarray:
    """Per question of ``questions``, 1 when answered right at the premise budget under ``ranking``: the report's own
    multiple-choice job (:func:`~labkit.experiments.gateskip.arms.premise._mc_job`) on the questions in this order."""
    cfg, ranking, questions = job
    state = load_file(REPORT / "artefacts.safetensors")
    point = ("gateskip", ranking, cfg.premise_budgets[-1])
    original, data.dictionary_questions = data.dictionary_questions, lambda n, seed: questions
    try:
        out = premise._mc_job((cfg, cfg.premise_seed, state, {"config": "", "steps": 0}, point))
    finally:
        data.dictionary_questions = original
    return np.array([row["accuracy"] for row in out.rows])


def t_interval(x: np.ndarray) -> str:
    mean, low, high = student_t_ci(x)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order-seed", type=int, default=1, help="the permutation of the questions (default 1)")
    args = parser.parse_args()
    cfg = Config(**PRESETS["cpu"])
    start = time.perf_counter()
    questions, order = shuffled(cfg, args.order_seed)
    results = jobs.run_jobs(score, [(cfg, ranking, questions) for ranking in ARMS.values()], workers=cfg.workers,
                            desc="dictmc re-batched")
    curves = pd.read_csv(REPORT / "tables" / "premise_curves.csv")
    rows = curves[(curves.task == "dictmc") & (curves.budget == cfg.premise_budgets[-1])]
    report = {arm: rows[rows.arm == arm].set_index("window").accuracy.sort_index().to_numpy() for arm in ARMS}
    rebatched = {}
    for arm, values in zip(ARMS, results, strict=True):
        back = np.empty_like(values)
        back[order] = values  # to the report's question order
        rebatched[arm] = back
    learned, control = ARMS
    print(f"# {Path(__file__).name} --order-seed {args.order_seed}: {len(order)} questions, "
          f"{time.perf_counter() - start:,.0f} s, budget {cfg.premise_budgets[-1]:.0%}, batch scope "
          f"({cfg.eval_batch} questions x 4 options a forward)")
    print(f"{'arm':<24} {'report order':>14} {'shuffled':>10}   shuffled - report, per question [95 % CI]")
    for arm in ARMS:
        print(f"{arm:<24} {report[arm].mean():>14.4f} {rebatched[arm].mean():>10.4f}   "
              f"{t_interval(rebatched[arm] - report[arm])}   ({(rebatched[arm] != report[arm]).mean():.0%} flip)")
    print(f"ranking edge (learned - random): report order {t_interval(report[learned] - report[control])}, "
          f"shuffled {t_interval(rebatched[learned] - rebatched[control])}")


if __name__ == "__main__":
    main()
