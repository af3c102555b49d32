import contextlib

import pytest
import torch

from labkit.models.decoder_lm import build_causal_lm, load_lm, n_parameters, save_lm


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_build_save_reload_roundtrip(arch, tmp_path):
    torch.set_num_threads(1)
    model = build_causal_lm(arch, vocab_size=16, hidden_size=32, n_layers=2, n_heads=2, seed=0).eval()
    x = torch.randint(0, 16, (2, 6))
    expected = model(x).logits
    assert expected.shape == (2, 6, 16)
    assert model.config.num_hidden_layers == 2
    reloaded = load_lm(save_lm(model, tmp_path / arch)).eval()
    torch.testing.assert_close(reloaded(x).logits, expected, atol=0.0, rtol=0.0)
    assert n_parameters(reloaded) == n_parameters(model)


def test_seed_makes_weights_identical():
    a = build_causal_lm("llama", 16, 32, 2, 2, seed=3)
    b = build_causal_lm("llama", 16, 32, 2, 2, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0.0, rtol=0.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown arch 'mamba'"):
        build_causal_lm("mamba", 16, 32, 2, 2)
    with pytest.raises(ValueError, match="divisible by n_heads 3"):
        build_causal_lm("llama", 16, 32, 2, 3)


def test_running_sum_sequences_are_consistent():
    from labkit.data import sequences

    x = sequences.running_sum_batch(5, n_digits=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, sequences.running_sum_length(4)) == (5, 13)
    digits, sums = x[:, 1:5], x[:, 6:10]
    torch.testing.assert_close(sums, digits.cumsum(1) % 10)
    assert (x[:, 0] == sequences.BOS).all() and (x[:, -1] == sequences.EOS).all() and (x[:, -2] == sums[:, -1]).all()
    scored = sequences.running_sum_scored(4)
    assert scored.shape == (12,) and scored.sum() == 7  # 4 sums, '=', answer, EOS
    with pytest.raises(ValueError, match="n_digits >= 1"):
        sequences.running_sum_batch(2, n_digits=0)


def test_running_sum_splits_are_disjoint_and_pinned():
    import itertools

    from labkit.data import sequences

    every = torch.tensor(list(itertools.product(range(10), repeat=3)))
    split = sequences.running_sum_split(every)
    assert {s: split.count(s) for s in sequences.SPLITS} == pytest.approx(
        {"train": 800, "val": 100, "test": 100}, abs=30
    )
    assert sequences.running_sum_split(every[:5]) == split[:5]  # a prompt's split does not depend on its batch
    gen = torch.Generator().manual_seed(0)
    for name in sequences.SPLITS:
        x = sequences.running_sum_batch(50, 3, gen, split=name)
        assert set(sequences.running_sum_split(x[:, 1:4])) == {name}
    with pytest.raises(ValueError, match="split must be one of"):
        sequences.running_sum_batch(2, 3, split="dev")
    assert not set(sequences.STDLIB_SPLIT_FILES["train"]) & set(sequences.STDLIB_SPLIT_FILES["val"])
    assert not set(sequences.STDLIB_SPLIT_FILES["val"]) & set(sequences.STDLIB_SPLIT_FILES["test"])


def test_stdlib_bytes_are_pinned_and_windowed():
    from labkit.data import sequences

    data, provenance = sequences.stdlib_bytes(("heapq.py", "bisect.py"))
    assert provenance["files"] == ["heapq.py", "bisect.py"] and len(provenance["sha256"]) == 64
    windows = sequences.byte_windows(data, 3, 16, torch.Generator().manual_seed(0))
    assert windows.shape == (3, 16) and windows.max() < 256
    with pytest.raises(FileNotFoundError, match="no_such_module.py"):
        sequences.stdlib_bytes(("no_such_module.py",))


def test_train_causal_lm_reduces_loss_and_runs_hooks():
    from labkit.data import sequences
    from labkit.train import train_causal_lm

    torch.manual_seed(0)
    model = build_causal_lm("llama", sequences.VOCAB_SIZE, 32, 2, 2, seed=0)
    gen = torch.Generator().manual_seed(0)
    calls = []
    history = train_causal_lm(
        model,
        lambda step: sequences.running_sum_batch(16, 4, gen),
        30,
        3e-3,
        progress=False,
        extra_loss=lambda m: torch.zeros(()) + 0.5,
        step_context=lambda step: calls.append(step) or contextlib.nullcontext(),
    )
    assert list(history.columns) == ["step", "loss", "extra", "lr"] and len(history) == 30 == len(calls)
    assert history.loss.iloc[-5:].mean() < history.loss.iloc[:5].mean()
    assert (history.extra == 0.5).all() and not model.training


def test_train_causal_lm_checkpoints_and_early_stop_match():
    """A run stopped after 6 of a 10-step schedule equals the same schedule checkpointed at 6, whatever the checkpoint
    does (here it draws random numbers); the schedule follows the horizon, not the stop."""
    from labkit.data import sequences
    from labkit.train import train_causal_lm

    model = build_causal_lm("llama", sequences.VOCAB_SIZE, 32, 2, 2, seed=0)

    def train(steps, **kwargs):
        model.load_state_dict(build_causal_lm("llama", sequences.VOCAB_SIZE, 32, 2, 2, seed=0).state_dict())
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(1)
        batches = lambda step: sequences.running_sum_batch(8, 4, gen)  # noqa: E731
        return train_causal_lm(model, batches, steps, 3e-3, schedule_steps=10, progress=False, **kwargs)

    seen, snapshots = [], {}

    def score(done):
        seen.append((done, model.training))
        torch.rand(100)  # must not shift the training's random stream
        snapshots[done] = {k: v.clone() for k, v in model.state_dict().items()}

    train(10, checkpoints=(3, 6), on_checkpoint=score)
    assert seen == [(3, False), (6, False)] and not model.training
    history = train(6)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(snapshots[6][name], value)
    assert history.lr.iloc[-1] > 3e-3 * 0.5  # still high at step 6 of a 10-step cosine: the horizon sets it
    with pytest.raises(ValueError, match="schedule_steps=10 is shorter than steps=11"):
        train(11)
    with pytest.raises(ValueError, match=r"outside: \[7\]"):
        train(6, checkpoints=(7,), on_checkpoint=score)
    with pytest.raises(ValueError, match="no on_checkpoint"):
        train(6, checkpoints=(3,))
