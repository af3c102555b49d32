"""C-Mixup's regression data: one split per (dataset, seed) from :mod:`labkit.data.regression`, shared by every arm
of that seed (so arms are paired)."""

from __future__ import annotations

from labkit.data import regression
from labkit.experiments.cmixup.config import DATASETS, Config


def load(name: str, seed: int, cfg: Config) -> regression.RegressionSplits:
    """One dataset by name (see ``DATASETS``); the split depends on ``seed``."""
    if name == "single_index":
        return regression.single_index(seed, n_train=cfg.single_index_n)
    if name in ("concrete", "concrete_lowdata"):
        return regression.concrete(seed, n_train=cfg.low_data_n if name == "concrete_lowdata" else None)
    if name == "diabetes":
        return regression.diabetes(seed)
    if name in ("cigar", "produc"):
        return regression.panel(name, seed)
    if name == "diamonds":
        return regression.diamonds(seed)
    if name in ("rcf_mnist", "rcf_digits"):
        from labkit.data import images

        base = images.mnist() if name == "rcf_mnist" else images.digits(seed)
        size = cfg.image_size if name == "rcf_mnist" else max(cfg.image_size, 8)
        return regression.rcf(
            base,
            seed,
            n_train=cfg.image_train,
            n_eval=cfg.image_eval,
            rotations=cfg.image_rotations if name == "rcf_mnist" else max(cfg.image_rotations, 3),
            size=size,
            angle_range=cfg.angle_range,
            exclude_digits=tuple(cfg.image_exclude_digits),
            minority=cfg.image_minority,
        )
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def is_image(name: str) -> bool:
    """True for the RCF image datasets (own seeds, grids and CNN)."""
    return name.startswith("rcf")


def seeds(name: str, cfg: Config) -> range:
    """The seeds a dataset runs: ``0 .. image_seeds-1`` for the image datasets, else ``0 .. seeds-1``."""
    return range(cfg.image_seeds if is_image(name) else cfg.seeds)


# The Config fields a split depends on (besides dataset and seed): the key of the split cache.
DATA_FIELDS = ("single_index_n", "low_data_n", "image_train", "image_eval", "image_rotations", "image_size",
               "angle_range", "image_exclude_digits", "image_minority")
_SPLITS: dict[tuple[object, ...], regression.RegressionSplits] = {}  # per-process cache of the last loaded split


def split(name: str, seed: int, cfg: Config) -> regression.RegressionSplits:
    """:func:`load`, cached for consecutive jobs of one (dataset, seed) in a worker process."""
    key = (name, seed, *(repr(getattr(cfg, f)) for f in DATA_FIELDS))
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = load(name, seed, cfg)
    return _SPLITS[key]
