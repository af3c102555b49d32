"""GateSkip regime search: gate learning rate x λ x fine-tuning length, one pretrained checkpoint per seed.

Each seed's LM is pretrained once (``experiment.pretrain``) and every fine-tune config of that seed starts from it
(``experiment.finetune_arms``); baselines (dense, random-skip fine-tune, ShortGPT, ULS) run once per fine-tune length.
Rows are appended to a CSV after every config, so a partial run keeps what finished.

    nohup nice -n 5 .venv/bin/python reports/gateskip/explore.py cumsum reports/gateskip/explore_cumsum.csv &
    GATE_LR=1e-2 TEXT_STEPS=600 nohup nice -n 5 .venv/bin/python reports/gateskip/explore.py text \
        reports/gateskip/explore_text.csv &
    GATE_LR=1e-2 OVERRIDES='{"n_layers": 8}' nohup nice -n 5 .venv/bin/python reports/gateskip/explore.py cumsum \
        reports/gateskip/explore_cumsum8.csv &
    .venv/bin/python reports/gateskip/explore.py summary reports/gateskip/explore_cumsum.csv
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.experiments import gateskip as experiment
from labkit.experiments import gateskip_summary as summary
from labkit.experiments.gateskip_arms import Pretrained

BUDGETS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)
SHOW = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6)  # budgets shown in the summary tables


def _append(path: Path, rows: list[dict], **labels) -> None:
    frame = pd.DataFrame(rows).assign(**labels)
    if path.exists():
        frame = pd.concat([pd.read_csv(path), frame], ignore_index=True)
    frame.to_csv(path, index=False)


def markdown(frame: pd.DataFrame) -> str:
    """A plain markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join(":--" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join("—" if pd.isna(row[c]) else str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _run_config(
    cfg: experiment.Config, pres: list[Pretrained], workdir: str | Path, out: Path, baselines: bool, label: str,
    log: Callable[[str], None],
) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    for pre in pres:
        res = experiment.finetune_arms(cfg, pre, workdir, baselines=baselines)
        _append(
            out,
            res.rows,
            config=label,
            gate_lr=cfg.gate_lr or cfg.finetune_lr,
            finetune_steps=cfg.finetune_steps,
            gate_kind=cfg.gate_kind,
        )
    log(
        f"{label}: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} CPU-s, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def summarize(path: Path, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per config x arm: quality at the shown budgets, mean gate, saved @90 % vs dense and own (mean ± std)."""
    data = pd.read_csv(path)
    data = data[data.task == task]
    metric = summary.quality_column(task)
    quality_rows, saved_rows = [], []
    for (config, steps), group in data.groupby(["config", "finetune_steps"], sort=False):
        base = data[(data.finetune_steps == steps) & (data.config.str.startswith("baselines"))]
        dense = base[base.arm == "dense"]
        for arm, sub in group.groupby("arm", sort=False):
            if arm == "dense":
                quality_rows.append({"config": config, "arm": arm, "0.000": f"{sub[metric].mean():.3f}"})
                continue
            arm_curves = pd.concat([sub, dense])
            row = {"config": config, "arm": arm, "seeds": sub.seed.nunique()}
            if "gate_mean" in sub and sub.gate_mean.notna().any():
                row["gate_mean"] = f"{sub.gate_mean.mean():.4f}"
            for ref in ("dense", "own"):
                for m in (metric, "token_acc"):
                    s = summary.saved_at_quality(arm_curves, m, reference=ref).query("arm == @arm").saved
                    row[f"saved90 {m} {ref}"] = f"{s.mean():.3f}±{s.std(ddof=0):.3f}"
            for at in (0.125, 0.25):  # the static arms' first two points: quality at equal saved fraction
                q = summary.quality_at(sub, metric, at)
                if len(q):
                    row[f"{metric}@{at:.1%}"] = f"{q[metric].mean():.3f}±{q[metric].std(ddof=0):.3f}"
            saved_rows.append(row)
            if sub.family.iloc[0] == "static":
                points = sub.groupby("budget")
            else:
                points = sub[sub.budget.round(3).isin(SHOW)].groupby("budget")
            qrow = {"config": config, "arm": arm}
            for budget, pts in points:
                qrow[f"{budget:.3f}"] = f"{pts[metric].mean():.3f}±{pts[metric].std(ddof=0):.3f}"
            quality_rows.append(qrow)
    return pd.DataFrame(quality_rows), pd.DataFrame(saved_rows)


def ngram_bpb() -> dict[str, float]:
    """Unigram and bigram (add-one) bits per byte on the pinned eval files, fitted on the train files: the floor
    a text LM must clearly beat."""
    import torch

    from labkit.data import sequences

    train = sequences.stdlib_bytes(sequences.STDLIB_TRAIN_FILES)[0].long()
    test = sequences.stdlib_bytes(sequences.STDLIB_EVAL_FILES)[0].long()
    uni = torch.bincount(train, minlength=256).double() + 1
    big = torch.ones(256, 256, dtype=torch.double)
    big.index_put_((train[:-1], train[1:]), torch.ones(train.numel() - 1, dtype=torch.double), accumulate=True)
    return {
        "unigram": float(-(uni / uni.sum()).log2()[test].mean()),
        "bigram": float(-(big / big.sum(1, keepdim=True)).log2()[test[:-1], test[1:]].mean()),
    }


def _best(path: Path, task: str, configs: list[str]) -> tuple[str, float]:
    """Config (of ``configs``) and λ whose GateSkip arm saves the most at 90 % of dense quality (mean over seeds)."""
    data = pd.read_csv(path)
    data = data[data.task == task]
    metric = summary.quality_column(task)
    best, best_value = None, None
    for config in configs:
        group = data[data.config == config]
        steps = group.finetune_steps.iloc[0]
        dense = data[(data.finetune_steps == steps) & (data.arm == "dense")]
        for weight, sub in group[group.family == "gateskip"].groupby("sparsity_weight"):
            saved = summary.saved_at_quality(pd.concat([sub, dense]), metric, reference="dense").saved.mean()
            area = sub[sub.budget.between(0.01, 0.21)][metric].mean()  # tie-break: quality over budgets 5-20 %
            saved = (saved, area if metric != "bpb" else -area)
            if best is None or saved > best_value:
                best, best_value = (config, float(weight)), saved
    return best


def main(task: str, out: Path) -> None:
    log_path = out.with_suffix(".log")

    def log(line: str) -> None:
        print(line, flush=True)
        with open(log_path, "a") as fh:
            fh.write(line + "\n")

    base = experiment.configure(
        os.environ.get("PRESET", "cpu"), {"tasks": (task,), "budgets": BUDGETS, "workers": 1, "progress": False}
    )
    if task == "text":
        base = dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in _text_overrides().items()})
    extra = json.loads(os.environ.get("OVERRIDES", "{}"))  # e.g. {"n_layers": 8}: a variant of the search
    base = dataclasses.replace(base, **extra)
    lambdas = tuple(float(w) for w in os.environ.get("LAMBDAS", "0.01,1").split(","))  # the first gets random rank
    lrs = (1e-3, 1e-2, 3e-2) if task == "cumsum" and "GATE_LR" not in os.environ else (float(os.environ["GATE_LR"]),)
    log(f"{task}: {base}")
    with tempfile.TemporaryDirectory(prefix="labkit-gateskip-explore-") as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        pres = [experiment.pretrain(base, task, seed, Path(tmp)) for seed in range(base.seeds)]
        pre_cost = pd.DataFrame([c for p in pres for c in p.cost])
        pre_cost.to_csv(out.with_name(out.stem + "_pretrain.csv"), index=False)
        log(
            f"pretrain {base.seeds} seeds: {time.perf_counter() - start:.0f} s wall, "
            f"{time.process_time() - cpu:.0f} CPU-s, load {os.getloadavg()[0]:.1f}"
        )

        def cfg_of(**kw: Any) -> experiment.Config:
            return dataclasses.replace(base, **kw)

        _run_config(cfg_of(sparsity_weights=()), pres, tmp, out, True, f"baselines {base.finetune_steps}", log)
        grid = []
        for lr in lrs:
            label = f"gate_lr={lr:g} steps={base.finetune_steps}"
            _run_config(cfg_of(gate_lr=lr, sparsity_weights=lambdas), pres, tmp, out, False, label, log)
            grid.append(label)
        if len(lrs) == 1:  # a single-lr variant (text track, deeper model): no 600-step / scalar follow-up
            return
        config, weight = _best(out, task, grid)
        best_lr = float(config.split()[0].split("=")[1])
        log(f"best of the 200-step grid: {config}, λ={weight:g}")
        long = 3 * base.finetune_steps
        _run_config(cfg_of(finetune_steps=long, sparsity_weights=()), pres, tmp, out, True, f"baselines {long}", log)
        label = f"gate_lr={best_lr:g} steps={long}"
        _run_config(
            cfg_of(finetune_steps=long, gate_lr=best_lr, sparsity_weights=(0.01, 1.0)),
            pres,
            tmp,
            out,
            False,
            label,
            log,
        )
        config, weight = _best(out, task, [*grid, label])
        steps = int(config.split("steps=")[1])
        lr = float(config.split()[0].split("=")[1])
        log(f"best overall: {config}, λ={weight:g}; scalar gates there")
        _run_config(
            cfg_of(finetune_steps=steps, gate_lr=lr, sparsity_weights=(weight,), gate_kind="scalar"),
            pres,
            tmp,
            out,
            False,
            f"scalar gate_lr={lr:g} steps={steps} λ={weight:g}",
            log,
        )


def _text_overrides() -> dict:
    """Text-track sizes from the environment (TEXT_STEPS, TEXT_LENGTH, TEXT_EVAL)."""
    return {
        "text_pretrain_steps": int(os.environ.get("TEXT_STEPS", "600")),
        "text_length": int(os.environ.get("TEXT_LENGTH", "64")),
        "eval_size": int(os.environ.get("TEXT_EVAL", "256")),
    }


if __name__ == "__main__":
    if sys.argv[1] == "summary":
        path = Path(sys.argv[2])
        task = sys.argv[3] if len(sys.argv) > 3 else "cumsum"
        pd.set_option("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 40)
        quality, saved = summarize(path, task)
        if task == "text":
            print({k: round(v, 3) for k, v in ngram_bpb().items()}, "bits per byte of n-gram references")
        print(markdown(quality))
        print()
        print(markdown(saved))
    else:
        main(sys.argv[1], Path(sys.argv[2]))
