"""The byte-level LM used by DSIR's downstream tracks: bytes in, bits per byte out."""

import math

import pytest

from labkit import seed_everything
from labkit.models import byte_lm


def test_training_lowers_bits_per_byte_from_uniform():
    seed_everything(0, threads=1)
    data = byte_lm.byte_tensor(["abcabcabc " * 40] * 4)
    assert data.dtype.is_floating_point is False and int(data.max()) < 256
    model = byte_lm.build_byte_lm(hidden=32, layers=1, heads=2, context=16, seed=0)
    before = byte_lm.bits_per_byte(model, data, context=16)
    assert before == pytest.approx(math.log2(256), abs=0.5)  # a fresh model is near uniform over bytes
    byte_lm.train_on_bytes(model, data, steps=60, lr=3e-3, context=16, batch=8, seed=0)
    assert byte_lm.bits_per_byte(model, data, context=16) < before - 2


def test_too_little_text_is_named():
    model = byte_lm.build_byte_lm(hidden=32, layers=1, heads=2, context=16, seed=0)
    with pytest.raises(ValueError, match="bytes of held-out text"):
        byte_lm.bits_per_byte(model, byte_lm.byte_tensor(["short"]), context=16)
    with pytest.raises(ValueError, match="bytes of training text"):
        byte_lm.train_on_bytes(model, byte_lm.byte_tensor(["short"]), 1, 1e-3, context=16, batch=2, seed=0)
