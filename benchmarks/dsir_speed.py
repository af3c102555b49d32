"""DSIR speed: labkit.select.DSIR (exact sha256 mode) vs data-selection 1.0.3, same corpus, one process each.

Both read the same jsonl files, fit the two bag-of-n-gram models, compute log importance weights, resample
k = N/10 documents and write them out. Prints docs/s (wall and CPU) of each stage and end to end, the ratio,
the weight agreement, threads and device. Needs the fetched GCIDE and FOLDOC sources (``labkit fetch``).

Usage: .venv/bin/python benchmarks/dsir_speed.py [--docs 50000] [--chunk-words 128]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labkit.data.corpora import build_corpus
from labkit.profile import device_info
from labkit.select import DSIR, write_selected


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def write_jsonl(path: Path, texts) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def run_reference(raw: Path, target: Path, work: Path, k: int) -> tuple[dict, np.ndarray]:
    from data_selection import HashedNgramDSIR

    times = {}
    ref = HashedNgramDSIR(
        [str(raw)], [str(target)], cache_dir=str(work / "ref_cache"), num_proc=1, min_example_length=0
    )
    with Clock() as c:
        ref.fit_importance_estimator(num_tokens_to_fit="auto")
    times["fit"] = c
    with Clock() as c:
        ref.compute_importance_weights()
    times["weights"] = c
    with Clock() as c:
        ref.resample(out_dir=str(work / "ref_out"), num_to_sample=k, cache_dir=str(work / "ref_resample"))
    times["resample+write"] = c
    return times, np.load(work / "ref_cache" / "log_importance_weights" / "0.npy")


def run_labkit(raw: Path, target: Path, work: Path, k: int, workers: int = 1) -> tuple[dict, np.ndarray, DSIR]:
    times = {}
    dsir = DSIR(workers=workers)
    with Clock() as c:
        dsir.fit(str(raw), str(target))
    times["fit"] = c
    with Clock() as c:
        weights = dsir.log_weights()
    times["weights"] = c
    with Clock() as c:
        chosen = dsir.resample(k, seed=0)
        write_selected(raw, chosen, work / f"labkit_out_{workers}.jsonl")
    times["resample+write"] = c
    return times, weights, dsir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000, help="raw documents (>= 50,000 for the issue's goal)")
    parser.add_argument("--chunk-words", type=int, default=128, help="words per raw chunk (the paper's 128)")
    parser.add_argument("--target-docs", type=int, default=2_000, help="FOLDOC chunks as the target")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pool = build_corpus(["gcide", "man"], chunk_words=args.chunk_words)
    if len(pool) < args.docs:
        raise SystemExit(f"only {len(pool)} chunks of {args.chunk_words} words available, asked for {args.docs}")
    rng = np.random.default_rng(0)
    raw_texts = pool.text.to_numpy()[np.sort(rng.choice(len(pool), args.docs, replace=False))]
    target_pool = build_corpus(["foldoc"], chunk_words=args.chunk_words)
    target_texts = target_pool.text.to_numpy()[rng.choice(len(target_pool), args.target_docs, replace=False)]
    k = args.docs // 10
    words = sum(len(t.split()) for t in raw_texts)

    print(f"# DSIR speed benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"corpus: {args.docs} raw chunks of {args.chunk_words} words (GCIDE + man pages; {words / 1e6:.2f} M words),"
        f" target {args.target_docs} FOLDOC chunks, k = {k}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at start; torch threads {torch.get_num_threads()}"
    )
    print(f"device_info: {device_info()}")
    print(
        "both: one process (data-selection num_proc=1; labkit workers=1), min_example_length=0, "
        "num_tokens_to_fit='auto'"
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_jsonl(work / "raw.jsonl", raw_texts)
        write_jsonl(work / "target.jsonl", target_texts)
        ours, w_ours, dsir = run_labkit(work / "raw.jsonl", work / "target.jsonl", work, k)
        ref, w_ref = run_reference(work / "raw.jsonl", work / "target.jsonl", work, k)
        two, w_two, _ = run_labkit(work / "raw.jsonl", work / "target.jsonl", work, k, workers=2)
        top = set(np.argsort(-w_ours, kind="stable")[:k].tolist())
        top_ref = set(np.argsort(-w_ref, kind="stable")[:k].tolist())

    print(
        f"\n{'stage':<16}{'reference wall s':>18}{'labkit wall s':>15}{'ratio':>8}"
        f"{'reference CPU s':>18}{'labkit CPU s':>14}{'ratio':>8}"
    )
    for stage in ours:
        r, o = ref[stage], ours[stage]
        print(
            f"{stage:<16}{r.wall:>18.2f}{o.wall:>15.2f}{r.wall / max(o.wall, 1e-9):>8.1f}"
            f"{r.cpu:>18.2f}{o.cpu:>14.2f}{r.cpu / max(o.cpu, 1e-9):>8.1f}"
        )
    total = {
        name: (sum(t.wall for t in d.values()), sum(t.cpu for t in d.values()))
        for name, d in (("reference", ref), ("labkit", ours), ("labkit-2", two))
    }
    print("\nend to end (fit + weights + resample + write), docs/s:")
    for name, (wall, cpu) in total.items():
        print(
            f"  {name:<10} {args.docs / wall:>9.0f} docs/s wall  {args.docs / cpu:>9.0f} docs/CPU-s  "
            f"({wall:.1f} s wall, {cpu:.1f} CPU-s in this process)"
        )
    print(
        f"RATIO labkit / reference, one process each: {total['reference'][0] / total['labkit'][0]:.1f}x wall, "
        f"{total['reference'][1] / total['labkit'][1]:.1f}x CPU"
    )
    print(
        f"labkit workers=2 vs reference (wall): {total['reference'][0] / total['labkit-2'][0]:.1f}x "
        f"(CPU of the worker processes is not counted above)"
    )
    print(
        f"\nexactness: max |log w labkit - log w reference| = {np.max(np.abs(w_ours - w_ref)):.2e}; "
        f"workers=2 identical to workers=1: {np.array_equal(w_two, w_ours)}; "
        f"top-{k} sets equal: {top == top_ref}"
    )
    print(f"labkit n-gram cache: {len(dsir._hasher._vocab)} tokens, {len(dsir._hasher._pair_keys)} bigrams hashed once")
    print("caveat: shared 2-core machine used by other agents at the same time; compare the ratios, not absolute times")


if __name__ == "__main__":
    main()
