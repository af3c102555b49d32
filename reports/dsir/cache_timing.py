"""Time DSIR.fit + log_weights + resample: in memory vs first cached fit (featurize into shards) vs second (mmap).

Usage: nice -n 5 .venv/bin/python reports/dsir/cache_timing.py N  (N chunks of the cpu-preset pool, one process).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from labkit import seed_everything
from labkit.data import corpora
from labkit.experiments import dsir as experiment
from labkit.select import DSIR


def main(n: int) -> None:
    seed_everything(0, threads=1)
    cfg = experiment.configure("cpu")
    corpus = corpora.build_corpus(
        [s for s in cfg.sources if s in corpora.available_sources()], chunk_words=64, max_chunks=cfg.max_chunks
    )
    raw = corpus.text.tolist()[:n]
    target = corpus[corpus.label == "foldoc/networking"].text.tolist()[:150]
    print(f"{len(raw)} raw chunks, {len(target)} target chunks, loadavg {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as cache:
        for name, kwargs in (
            ("in memory", {}),
            ("cached, first fit", {"cache_dir": cache}),
            ("cached, second fit", {"cache_dir": cache}),
        ):
            w0, c0 = time.perf_counter(), time.process_time()
            dsir = DSIR(batch_size=10000, **kwargs).fit(raw, target)
            weights = dsir.log_weights()
            dsir.resample(1000, seed=0)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            print(f"{name:20s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  weights[:3] {weights[:3].round(6).tolist()}")
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
        print(f"cache size on disk: {size / 1e6:.1f} MB")
    print(f"loadavg after {os.getloadavg()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50000)
