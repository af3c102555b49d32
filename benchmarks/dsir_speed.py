"""DSIR speed and memory at pool sizes 10^4 -> 10^6: data-selection 1.0.3 vs labkit exact, fast, 2 workers and Ray.

Every variant runs end to end on the same jsonl shard files (featurize, fit p_raw and p_target, weight, Gumbel top-k
resample k = N/10, write the selected lines), each in a fresh subprocess so that its peak RSS is its own:

- reference: ``data_selection.HashedNgramDSIR`` with ``num_proc=1`` (only up to ``--reference-max`` documents);
- exact: :func:`labkit.select.select_files` with ``hash="sha256"`` (weights identical to the reference), 1 process;
- fast / fast x2: ``hash="fast"`` with 1 and 2 featurization processes;
- ray: :func:`labkit.select.select_files_ray` (fast, local Ray with 2 CPUs, one task per file and round).

Then the agreement of fast and exact weights on the DSIR experiment's real pool (cpu preset). Pools larger than the
cached corpora repeat their chunks (said in the output). One run per variant: the sizes are too large to repeat
round-robin as ``labkit.profile.measure_many`` does, so compare the ratios and read the load average printed.

Usage: .venv/bin/python benchmarks/dsir_speed.py [--sizes 10000,100000,1000000] | tee benchmarks/results/dsir_speed.txt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

VARIANTS = ("reference", "exact", "fast", "fast x2", "ray")
CORES = {"reference": 1, "exact": 1, "fast": 1, "fast x2": 2, "ray": 2}  # processes doing the work


def write_jsonl(path: Path, texts: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss, which keeps the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def run_variant(variant: str, folder: Path, k: int) -> dict:
    """One variant end to end in this (child) process; returns timings, RSS and the selection's file."""
    files = sorted(str(p) for p in folder.glob("raw-*.jsonl"))
    target = str(folder / "target.jsonl")
    work = Path(tempfile.mkdtemp(dir=folder))
    result = {"startup_s": 0.0}
    wall, cpu = time.perf_counter(), time.process_time()
    if variant == "reference":
        from data_selection import HashedNgramDSIR

        ref = HashedNgramDSIR(files, [target], cache_dir=str(work / "cache"), num_proc=1, min_example_length=0)
        ref.fit_importance_estimator(num_tokens_to_fit="auto")
        ref.compute_importance_weights()
        ref.resample(out_dir=str(work / "out"), num_to_sample=k, cache_dir=str(work / "resample"))
        weights = np.concatenate([np.load(work / "cache" / "log_importance_weights" / f"{i}.npy")
                                  for i in range(len(files))])
        np.save(folder / "reference_weights.npy", weights)
    elif variant == "ray":
        import ray

        from labkit.select import select_files_ray
        from labkit.select.distributed import start_ray

        start_ray(num_cpus=2)
        result["startup_s"] = time.perf_counter() - wall
        wall, cpu = time.perf_counter(), time.process_time()  # start-up is reported apart
        chosen = select_files_ray(files, target, k, cache_dir=work / "cache", hash="fast", out_path=work / "out.jsonl")
        ray.shutdown()
        np.save(folder / "ray_indices.npy", chosen.indices)
    else:
        from labkit.select import select_files

        chosen = select_files(files, target, k, cache_dir=work / "cache", out_path=work / "out.jsonl",
                              hash="sha256" if variant == "exact" else "fast", workers=CORES[variant])
        np.save(folder / f"{variant.replace(' ', '_')}_indices.npy", chosen.indices)
        if variant == "exact":
            np.save(folder / "exact_log_diff.npy", chosen.log_diff)
    child_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu + child_usage.ru_utime + child_usage.ru_stime,
        rss_mb=peak_rss_mb(),
        child_rss_mb=child_usage.ru_maxrss / 1024,
    )
    return result


def child(variant: str, folder: Path, k: int) -> dict:
    """Run one variant in a fresh Python process (its own peak RSS); the JSON result is its last stdout line."""
    code = [sys.executable, __file__, "--child", variant, str(folder), str(k)]
    done = subprocess.run(code, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(k: int = 3000) -> list[dict]:
    """Fast vs exact (and crc32 vs exact, the same tokens with another hash) on real pools, one row per target.

    The DSIR experiment's cpu-preset pool with each target's 150 fit chunks (seed 0, left out of the selection),
    plus the speed pool's setting (GCIDE + man 128-word chunks, a 2,000-chunk FOLDOC target). Per mode: Spearman
    of the log weights against exact, overlap of the top k and of the Gumbel draw (same noise), and label
    precision (share of the draw carrying the target's labels).
    """
    from scipy import stats

    from labkit.data import corpora
    from labkit.experiments.dsir import config as dsir_setup
    from labkit.select import DSIR, featurize
    from labkit.select.stream import indexed_gumbel, top_keys

    cfg = dsir_setup.Config()
    corpus = corpora.build_corpus([s for s in cfg.sources if s in corpora.available_sources()],
                                  chunk_words=cfg.chunk_words, max_chunks=cfg.max_chunks)
    cases = []
    for target, tags in dsir_setup.TARGETS.items():
        members = np.flatnonzero(np.isin(corpus.label.to_numpy(), tags))
        if len(members) >= 300:
            cases.append(("cpu pool", target, tags, np.sort(np.random.default_rng(0).permutation(members)[:150])))
    speed_pool = corpora.build_corpus(["gcide", "man", "foldoc"], chunk_words=128)
    foldoc = np.flatnonzero(speed_pool.source.to_numpy() == "foldoc")
    fit = np.sort(np.random.default_rng(0).permutation(foldoc)[:2000])
    cases.append(("gcide+man", "foldoc (2000 chunks)", tuple(speed_pool.label[foldoc].unique()), fit))
    rows, pools = [], {}
    for name, frame in (("cpu pool", corpus), ("gcide+man", speed_pool)):
        texts = frame.text.tolist()
        modes = ("sha256", "crc32", "fast")
        pools[name] = (frame.label.to_numpy(), {mode: featurize(texts, hash=mode) for mode in modes})
    for pool_name, target, tags, fit in cases:
        labels, feats = pools[pool_name]
        everyone = np.arange(len(labels))
        eligible = np.ones(len(labels), dtype=bool)
        eligible[fit] = False
        if pool_name == "gcide+man":  # the target domain is not in this pool: FOLDOC chunks are only the target
            eligible[np.isin(labels, tags)] = False
        noise = indexed_gumbel(0, everyone)
        weights, top, drawn = {}, {}, {}
        for mode, f in feats.items():
            weights[mode] = DSIR(hash=mode).fit(f, f.subset(fit), exclude=fit).log_weights()
            masked = np.where(eligible, weights[mode], -np.inf)
            top[mode] = top_keys(masked, everyone, k)[1]
            drawn[mode] = top_keys(masked + noise, everyone, k)[1]
        row = {"pool": pool_name, "target": target}
        for mode in ("fast", "crc32"):
            row[f"{mode}_spearman"] = stats.spearmanr(weights["sha256"][eligible], weights[mode][eligible])[0]
            row[f"{mode}_top"] = len(set(top["sha256"].tolist()) & set(top[mode].tolist())) / k
            row[f"{mode}_drawn"] = len(set(drawn["sha256"].tolist()) & set(drawn[mode].tolist())) / k
        for mode in ("sha256", "fast"):
            row[f"{mode}_precision"] = float(np.isin(labels[drawn[mode]], tags).mean())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="raw pool sizes in chunks")
    parser.add_argument("--chunk-words", type=int, default=128, help="words per raw chunk (the paper's 128)")
    parser.add_argument("--files", type=int, default=10, help="jsonl shard files per pool (Ray: one task each)")
    parser.add_argument("--target-docs", type=int, default=2000, help="FOLDOC chunks as the target")
    parser.add_argument("--reference-max", type=int, default=10000, help="largest pool given to data-selection")
    parser.add_argument("--exact-max", type=int, default=100000, help="largest pool given to the exact mode")
    parser.add_argument("--no-agreement", action="store_true", help="skip the fast-vs-exact agreement section")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return

    import torch

    from labkit.data.corpora import build_corpus
    from labkit.profile import device_info

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    pool = build_corpus(["gcide", "man"], chunk_words=args.chunk_words).text.to_numpy()
    rng = np.random.default_rng(0)
    target_pool = build_corpus(["foldoc"], chunk_words=args.chunk_words).text.to_numpy()
    target = target_pool[rng.choice(len(target_pool), args.target_docs, replace=False)]
    order = rng.permutation(len(pool))
    print(f"# DSIR speed benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS=1 in every variant")
    print(f"device_info: {device_info()}")
    print(f"raw pool: 128-word chunks of GCIDE + man pages ({len(pool)} distinct chunks; larger pools repeat them in a "
          f"shuffled cycle), split over {args.files} jsonl files; target: {args.target_docs} FOLDOC chunks; "
          "k = N/10; min_example_length=0")
    print("variants: reference = data-selection 1.0.3 num_proc=1; exact = select_files(hash='sha256'); fast = "
          "select_files(hash='fast'); fast x2 = 2 featurization processes; ray = select_files_ray(hash='fast'), local "
          "Ray with 2 CPUs (start-up time listed apart, not in wall)")
    print("MB = raw UTF-8 text; MB/s/core = MB / wall / cores used; MB/CPU-s counts this process and its children "
          "(not Ray's workers); RSS = peak VmHWM of the variant's process; child RSS = largest child's ru_maxrss "
          "(fork-inherited, so an upper bound; Ray's workers are not children)\n")
    header = (f"{'chunks':>9} {'MB':>7} {'variant':<10}{'wall s':>9}{'MB/s':>8}{'MB/s/core':>11}{'MB/CPU-s':>10}"
              f"{'RSS MB':>8}{'child RSS':>10}{'x ref/core':>11}{'x exact/core':>13}")
    print(header)
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            texts = pool[order[np.arange(n) % len(pool)]]
            megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
            for i, part in enumerate(np.array_split(np.arange(n), args.files)):
                write_jsonl(folder / f"raw-{i:03d}.jsonl", texts[part])
            write_jsonl(folder / "target.jsonl", target)
            per_core = {}
            for variant in VARIANTS:
                if (variant == "reference" and n > args.reference_max) or (variant == "exact" and n > args.exact_max):
                    continue
                r = child(variant, folder, n // 10)
                per_core[variant] = megabytes / r["wall_s"] / CORES[variant]
                ratio = {v: f"{per_core[variant] / per_core[v]:.1f}" if v in per_core else "-"
                         for v in ("reference", "exact")}
                cpu_rate = f"{megabytes / r['cpu_s']:.2f}" if variant != "ray" else "-"
                print(f"{n:>9} {megabytes:>7.1f} {variant:<10}{r['wall_s']:>9.1f}{megabytes / r['wall_s']:>8.2f}"
                      f"{per_core[variant]:>11.2f}{cpu_rate:>10}{r['rss_mb']:>8.0f}{r['child_rss_mb']:>10.0f}"
                      f"{ratio['reference']:>11}{ratio['exact']:>13}"
                      + (f"   (Ray start-up {r['startup_s']:.1f} s)" if variant == "ray" else ""), flush=True)
            same = np.array_equal(np.load(folder / "fast_indices.npy"), np.load(folder / "ray_indices.npy"))
            same2 = np.array_equal(np.load(folder / "fast_indices.npy"), np.load(folder / "fast_x2_indices.npy"))
            checks.append(f"n={n}: ray selection == fast selection: {same}; fast x2 == fast: {same2}")
            if (folder / "reference_weights.npy").exists():
                from labkit.select import DSIR

                ours = DSIR().fit(list(texts), list(target))
                gap = np.max(np.abs(ours.log_weights() - np.load(folder / "reference_weights.npy")))
                same_diff = np.array_equal(ours.log_diff[:, 0], np.load(folder / "exact_log_diff.npy"))
                checks.append(f"n={n}: exact: max |log w labkit - log w reference| = {gap:.2e}; streaming log ratio "
                              f"== in-memory DSIR's: {same_diff}")
            print(f"  load average after n={n}: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print("\nchecks:")
    for line in checks:
        print("  " + line)
    if args.no_agreement:
        return
    print("\nfast vs exact on real pools (labkit corpora cache): the DSIR experiment's cpu-preset pool (64-word "
          "chunks, each target's 150 fit chunks, seed 0) and the speed pool (GCIDE + man 128-word chunks, a 2000-chunk "
          "FOLDOC target); fit chunks never selected; k = 3000. crc32 = exact tokens with another hash: the spread "
          "any change of hash gives. precision = share of the Gumbel draw with the target's labels (0 by design "
          "in the speed pool, whose FOLDOC chunks are all target).")
    rows = agreement()
    columns = ["fast_spearman", "crc32_spearman", "fast_top", "crc32_top", "fast_drawn", "crc32_drawn",
               "sha256_precision", "fast_precision"]
    titles = ["rho fast", "rho crc32", "top fast", "top crc32", "draw fast", "draw crc32", "prec exact", "prec fast"]
    print(f"{'pool':<10}{'target':<23}" + "".join(f"{t:>11}" for t in titles))
    for r in rows:
        print(f"{r['pool']:<10}{r['target']:<23}" + "".join(f"{r[c]:>11.3f}" for c in columns))
    means = [np.mean([r[c] for r in rows]) for c in columns]
    print(f"{'mean':<33}" + "".join(f"{m:>11.3f}" for m in means))
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; caveat: a shared 2-core machine "
          "used by other agents at the same time: compare the ratios, not absolute times")


if __name__ == "__main__":
    main()
