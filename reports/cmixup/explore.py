"""Explorations beyond the cpu preset: where does C-Mixup's effect show? Each configuration writes one CSV of every
trained model (runs) into reports/cmixup/explorations/; summarize.py turns them into explorations.md.

Run: .venv/bin/python reports/cmixup/explore.py NAME [NAME ...]   (names: see CONFIGS)
"""

import sys
import time
from pathlib import Path

from labkit.experiments import cmixup as E

TAB = {"arms": ["erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup"], "sigmas": [0.1, 0.3, 1.0]}
IMG = {"arms": ["erm", "mixup", "cmixup"], "image_seeds": 3}
CONFIGS = {
    "cigar_ood": {**TAB, "datasets": ["cigar"], "seeds": 5},
    "concrete_full": {**TAB, "datasets": ["concrete"], "seeds": 3},
    "single_index_long": {**TAB, "datasets": ["single_index"], "seeds": 5, "epochs": 200, "batch_size": 16},
    "rcf_dataset_scope": {**IMG, "datasets": ["rcf_mnist"], "image_scope": "dataset", "image_sigmas": [0.3, 1.0]},
    "diabetes": {**TAB, "datasets": ["diabetes"], "seeds": 5},
    "produc_ood": {**TAB, "datasets": ["produc"], "seeds": 5},
    "rcf_digits_trial": {**IMG, "datasets": ["rcf_digits"], "image_size": 16, "image_epochs": 12,
                         "image_sigmas": [0.3, 0.7]},
    # reduced configurations (run late, when the shared machine was at load 14 on 2 cores)
    "concrete_full_small": {"datasets": ["concrete"], "seeds": 3, "arms": ["erm", "mixup", "cmixup"],
                            "sigmas": [0.3, 1.0]},
    "single_index_long_small": {"datasets": ["single_index"], "seeds": 3, "epochs": 200, "batch_size": 16,
                                "arms": ["erm", "mixup", "cmixup"], "sigmas": [0.1, 0.3]},
    "cmixup_manifold_small": {"datasets": ["single_index", "concrete_lowdata"], "seeds": 3,
                              "arms": ["erm", "cmixup", "cmixup_manifold"], "sigmas": [0.3]},
    "rcf_180": {**IMG, "datasets": ["rcf_mnist"], "angle_range": 180.0, "image_sigmas": [0.3, 1.0]},
    "rcf_180_all_arms": {"datasets": ["rcf_mnist"], "angle_range": 180.0, "image_seeds": 5,
                         "arms": ["erm", "mixup", "manifold_mixup", "feature_mixup", "cmixup"],
                         "image_sigmas": [0.3, 1.0]},
    "lam_per_sample": {**TAB, "datasets": ["single_index", "concrete_lowdata"], "seeds": 5, "lam_per": "sample",
                       "arms": ["erm", "mixup", "cmixup"]},
    "cmixup_manifold": {**TAB, "datasets": ["single_index", "concrete_lowdata"], "seeds": 5,
                        "arms": ["erm", "cmixup_manifold"]},
}

if __name__ == "__main__":
    out = Path(__file__).parent / "explorations"
    out.mkdir(exist_ok=True)
    for name in sys.argv[1:]:
        cfg = E.configure("cpu", CONFIGS[name])
        start = time.time()
        runs = E.run(cfg, progress=False)
        runs.assign(exploration=name).to_csv(out / f"{name}.csv", index=False)
        print(f"{name}: {len(runs)} models in {time.time() - start:.0f} s", flush=True)
