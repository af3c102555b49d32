"""Sparse Model Soups as one experiment: the budget check's config, the choice of the best ingredient on validation
(judged from computed rows), one tiny run (smoke preset, 2 seeds), and the same verdicts after the CSV round trip and
after loading a recorded report."""

import io

import pandas as pd
import pytest

from labkit import report
from labkit.experiments import sparse_soups
from labkit.experiments.sparse_soups import summary
from labkit.experiments.sparse_soups.config import (
    BEST_INGREDIENT,
    DENSE,
    INGREDIENT,
    MEAN_INGREDIENT,
    NAIVE,
    REPRUNED,
    REPRUNED_RETRAINED,
    longer,
    lr_grid,
    trained_arms,
    tuned_arms,
)

COMPUTED = {"phases", "trained", "naive", "curves", "soups", "val_curves", "longer", "tuning", "trivial"}
JUDGED = {"final", "selection", "convergence_curves", "scores", "claims", "sanity", "budget", "health", "lr_choice"}


@pytest.fixture(scope="module")
def smoke():
    """The smoke preset on 2 seeds (a few seconds): its config and computed tables."""
    cfg = sparse_soups.configure("smoke", {"seeds": 2, "curve_points": 2, "naive_runs": 2})
    return cfg, sparse_soups.arms.compute(cfg, progress=False)


def _same_verdicts(a, b) -> None:
    """Two Results agree on every claim (effect, interval, p, verdicts) and sanity flag."""
    pd.testing.assert_frame_equal(a.claims, b.claims, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(a.sanity, b.sanity, check_exact=False, rtol=1e-12)
    assert sparse_soups.verdict_text(a) == sparse_soups.verdict_text(b)
    assert sparse_soups.headline_metrics(a) == pytest.approx(sparse_soups.headline_metrics(b), rel=1e-12)


def test_longer_doubles_every_retrain_and_the_pretraining_and_drops_the_naive_chains():
    cfg = sparse_soups.configure("cpu")
    long = longer(cfg)
    assert (long.retrain_epochs, long.pretrain_epochs) == (2 * cfg.retrain_epochs, 2 * cfg.pretrain_epochs)
    assert long.warmup_frac == cfg.warmup_frac and long.m == cfg.m and long.seeds == cfg.seeds
    odd = longer(sparse_soups.configure("smoke", {"budget_factor": 2.5}))
    assert (odd.retrain_epochs, odd.pretrain_epochs) == (3, 8)  # rounded up: at least the factor
    with pytest.raises(ValueError, match="budget_factor"):
        sparse_soups.configure("smoke", {"budget_factor": 1.5})


def test_seeds_is_a_count_and_the_presets_keep_their_seeds():
    assert [sparse_soups.configure(p).seeds for p in ("smoke", "cpu", "gpu")] == [3, 5, 5]  # were (0, 1, 2), 0..4


def test_best_ingredient_is_chosen_on_validation_not_test():
    cfg = sparse_soups.configure("smoke", {"greedy_chain": True})
    metrics = {"sparsity": 0.8, "ood_acc": 50.0, "ece": 0.0}
    trained = pd.DataFrame([{"seed": 0, "arm": "SMS uniform", **metrics, "test_acc": 95.0, "val_acc": 96.0}])
    last = pd.DataFrame([{"seed": 0, "arm": INGREDIENT, "member": j, **metrics, "test_acc": test, "val_acc": val}
                         for j, (test, val) in enumerate([(99.0, 90.0), (91.0, 95.0)])])
    final, best = summary.with_ingredients(cfg, trained, last)
    chosen = final.set_index("arm").loc[BEST_INGREDIENT]
    assert best == {0: 1} and chosen["test_acc"] == 91.0 and chosen["val_acc"] == 95.0  # not the test-best 0
    assert final.set_index("arm").loc[MEAN_INGREDIENT, "val_acc"] == 92.5
    assert list(final.arm) == ["SMS uniform", MEAN_INGREDIENT, BEST_INGREDIENT]
    selection = summary.selection_table(last, best)
    assert set(selection[selection.selected].member) == {1} and set(selection.split) == {"val", "test"}


def test_smoke_run_judges_premise_and_claims_and_reruns_the_first_seed_at_twice_the_budget(smoke):
    cfg, computed = smoke
    assert set(computed.tables) == COMPUTED
    results = sparse_soups.summary.judge(cfg, computed)
    assert JUDGED <= set(results.tables) and not JUDGED & COMPUTED
    assert set(results.claims["claim"]) == {c.name for c in sparse_soups.claims.claims(cfg.m, cfg.phases, cfg.ood)}
    assert (results.claims["n"] == 2).all()
    assert list(results.claims["role"][:2 * cfg.phases]) == ["premise"] * 2 * cfg.phases
    lengths = results.convergence_curves.groupby(["arm", "seed", "member"]).size()
    assert (lengths == cfg.val_points).all()
    assert {"IMP", "SWA", "SMS uniform", "SMS greedy", f"IMP {cfg.m}x", BEST_INGREDIENT,
            MEAN_INGREDIENT} <= set(results.convergence_curves.arm)
    assert set(results.selection.split) == {"val", "test"} and results.selection.selected.sum() == 2 * 2
    assert results.final.groupby("seed").size().nunique() == 1 and results.final.val_acc.notna().all()
    budget = results.budget
    assert set(budget.seed) == {0} and (budget.budget == 2.0).all()
    assert set(budget.arm) == set(trained_arms(cfg)) | {DENSE, MEAN_INGREDIENT, BEST_INGREDIENT,
                                                                      f"prediction ensemble ({cfg.m}x inference)"}
    assert any(k.endswith("(2x budget)") for k in results.timings)
    assert set(results.health.arm) == set(results.final.arm) - {NAIVE, REPRUNED} and len(results.health) > 0
    assert set(results.sanity.arm) >= set(budget.arm) and results.sanity.converged.notna().sum() == len(set(budget.arm))
    assert all(results.checks.values()) and "rule: " in sparse_soups.verdict_text(results)


def test_the_baselines_are_tuned_on_validation_over_the_ingredients_lr_grid(smoke):
    cfg, computed = smoke
    tuning = computed.tables["tuning"]
    assert set(tuning.arm) == set(tuned_arms(cfg)) == {"IMP", f"IMP {cfg.m}x", "SWA"}
    assert all(sorted(set(rows.lr)) == sorted(lr_grid(cfg)) for _, rows in tuning.groupby("arm"))
    choice = summary.lr_choice(tuning)
    for arm, rows in choice.groupby("arm"):
        assert rows.chosen.sum() == 1 and rows.loc[rows.chosen, "val_acc"].iloc[0] == rows.val_acc.max()
        kept = computed.tables["trained"].set_index(["arm", "seed"]).loc[arm, "val_acc"]
        chosen = tuning[(tuning.arm == arm) & tuning.chosen].set_index("seed").val_acc
        pd.testing.assert_series_equal(kept.sort_index(), chosen.sort_index(), check_names=False)
    hand = pd.DataFrame({"arm": "IMP", "seed": [0, 1, 0, 1], "lr": [0.1, 0.1, 0.2, 0.2],
                         "val_acc": [90.0, 91.0, 92.0, 90.0], "test_acc": [99.0, 99.0, 0.0, 0.0]})
    assert sparse_soups.arms.runs.choose_lrs(hand) == {"IMP": 0.2}  # best mean validation, not best test
    edges = summary.lr_choice(hand.assign(chosen=hand.lr == 0.2))
    assert edges["grid edge"].tolist() == ["lowest", "highest"]
    assert summary.lr_notes(edges) == ["IMP: lr 0.2 chosen on validation (the grid's highest; a wider grid might "
                                       "move it)"]
    inside = summary.lr_choice(pd.concat([hand, hand.assign(lr=hand.lr * 2)]).assign(chosen=lambda t: t.lr == 0.2))
    recorded = pd.read_csv(io.StringIO(inside.to_csv(index=False)))  # a committed table: "" comes back as NaN
    assert summary.lr_notes(recorded) == ["IMP: lr 0.2 chosen on validation"]
    assert summary.lr_choice(hand[hand.lr == 0.1].assign(chosen=True))["grid edge"].tolist() == [""]  # one lr


def test_ood_is_scored_per_corruption_and_the_naive_average_is_also_retrained(smoke):
    cfg, computed = smoke
    trained = computed.tables["trained"]
    per = trained[[f"ood_acc[{spec}]" for spec in cfg.ood]]
    assert len(cfg.ood) >= 3 and (abs(per.mean(axis=1) - trained.ood_acc) < 1e-9).all()
    retrained = trained[trained.arm == REPRUNED_RETRAINED]
    assert len(retrained) == cfg.seeds and (abs(retrained.sparsity - cfg.goal_sparsity) < 1e-4).all()


@pytest.mark.parametrize("vary, expected", [
    (("seed",), [(0.1, 1e-4, 10.0)] * 3),
    (("lr",), [(0.05, 1e-4, 10.0), (0.1, 1e-4, 10.0), (0.15, 1e-4, 10.0)]),
    (("wd", "augment"), [(0.1, 0.5e-4, 10.0), (0.1, 1e-4, 15.0), (0.1, 1.5e-4, 5.0)]),
])
def test_ingredients_vary_by_the_declared_knobs(vary, expected):
    from labkit.experiments.sparse_soups.arms.training import variant

    cfg = sparse_soups.configure("smoke", {"m": 3, "vary": vary, "augment": 10.0})
    got = [tuple(variant(cfg, j).values()) for j in range(cfg.m)]
    assert got == [pytest.approx(e) for e in expected]


def test_judging_the_csv_round_trip_gives_the_same_verdicts(smoke):
    cfg, computed = smoke
    _same_verdicts(summary.judge(cfg, computed), summary.judge(cfg, computed.roundtrip()))


def test_a_recorded_report_loads_with_the_same_claims(smoke, tmp_path, monkeypatch):
    cfg, computed = smoke
    results = summary.judge(cfg, computed)
    monkeypatch.setenv(report.REPORT_DIR_ENV, str(tmp_path))
    report.record(cfg, metrics=sparse_soups.headline_metrics(results),
                  tables={name: results.tables[name] for name in JUDGED}, computed=results.computed)
    loaded = sparse_soups.EXPERIMENT.load(tmp_path)
    assert loaded.config == cfg
    _same_verdicts(results, loaded)
    pd.testing.assert_frame_equal(results.final, loaded.final, check_exact=False, rtol=1e-12)


def test_accuracy_is_exact_at_the_split_resolution_so_a_tie_with_the_budget_tolerance_is_not_a_flag():
    """20 more correct of 10,000 images is exactly 0.2 pp: a float32 mean made it 0.20000339 > 0.2, a false alarm."""
    import torch

    from labkit import protocol
    from labkit.experiments.sparse_soups.arms.training import accuracy

    labels = torch.arange(10_000) % 10
    right = torch.nn.functional.one_hot(labels, 10).float()

    def wrong(k: int) -> torch.Tensor:
        probs = right.clone()
        probs[:k] = torch.roll(probs[:k], 1, 1)
        return probs

    short, long = accuracy(wrong(296), labels), accuracy(wrong(276), labels)
    assert (short, long) == (97.04, 97.24)
    table = pd.DataFrame({"arm": ["IMP", "IMP"], "seed": [0, 0], "budget": [1, 2], "val_acc": [short, long]})
    assert protocol.budget_check(table, "val_acc", 0.2, lower_is_better=False)["converged"].all()
