"""The ``labkit`` command: list, run, report, sweep, explore and compare notebooks; fetch and clean the data cache."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

from labkit import index as reports_index
from labkit import runner
from labkit.config import type_name
from labkit.report import atomic_write_text

WAIT_HELP = "when another run is writing the same report folder, wait this long for it (default 0: fail at once)"


def _list(_: argparse.Namespace) -> int:
    for path in runner.notebooks():
        try:
            module = runner.experiment_module(path)
        except runner.MissingExtra as err:  # listed all the same, with the extra to install
            print(f"{path.stem}  ({path.relative_to(runner.ROOT)})\n  {err}")
            continue
        print(f"{path.stem}  ({path.relative_to(runner.ROOT)})  presets: {', '.join(module.PRESETS)}")
        types_ = runner.parameter_types(module)
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(module.Config)}
        defaults.update(runner.RUNNER_DEFAULTS)
        for name, tp in types_.items():
            by_preset = "  ".join(f"{p}={values[name]!r}" for p, values in module.PRESETS.items() if name in values)
            line = f"  {name}: {type_name(tp)} = {defaults[name]!r}"
            print(line + (f"   [{by_preset}]" if by_preset else ""))
    return 0


def _run(args: argparse.Namespace) -> int:
    path = runner.resolve_notebook(args.notebook)
    params = runner.parse_parameters(runner.experiment_module(path), args.param or [])
    result = runner.run_notebook(path, args.preset, params, out_dir=args.out, force=True, wait=args.wait)
    if not result.ok:
        print(f"labkit run: {path.name} failed after {result.wall_seconds:.0f} s\n{result.error}", file=sys.stderr)
        return 1
    print(f"labkit run: {path.name} [{args.preset}] -> {result.out_dir} ({result.wall_seconds:.0f} s)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    paths = [runner.resolve_notebook(n) for n in args.notebooks] if args.notebooks else runner.notebooks()
    jobs, failures = [], []
    for path in paths:
        try:
            jobs += [(path, name, params) for name, params in runner.report_variants(path, args.preset)]
        except runner.MissingExtra as err:  # the other notebooks can still be reported
            failures.append(runner.RunResult(path, runner.default_out_dir(path, args.preset), ok=False, error=str(err)))
            print(f"{path.stem}: FAILED: {err}")
    for path, name, params in (bar := tqdm(jobs, desc=f"labkit report [{args.preset}]", unit="report")):
        bar.set_postfix_str(f"{path.stem} {name}")
        out = runner.default_out_dir(path, name)
        label = path.stem if name == args.preset else f"{path.stem} [{name}]"
        digests = runner.input_digests(path, args.preset, params)
        reason = runner.stale_reason(out, digests)
        try:
            result = runner.run_notebook(path, args.preset, params, out_dir=out, force=args.force, progress=False,
                                         wait=args.wait, digests=digests)
        except runner.OutputLocked as err:  # another run is writing this report; the others can still go ahead
            result = runner.RunResult(path, out, ok=False, error=str(err))
        if result.skipped:  # one line per report: what it was and what was done
            status = "up to date, kept"
        else:
            done = "re-judged from its computed tables" if result.rejudged else "rerun"
            status = ((f"stale ({reason})" if reason else "up to date") + f", {done}: "
                      + f"{'ok' if result.ok else 'FAILED'} ({result.wall_seconds:.0f} s)")
        tqdm.write(f"{label}: {status}")
        if not result.ok:
            failures.append(result)
            tqdm.write(result.error)
    index = reports_index.write_index()
    print(f"index: {index}")
    return 1 if failures else 0


def _sweep(args: argparse.Namespace) -> int:
    from labkit import sweep

    path = runner.resolve_notebook(args.notebook)
    module = runner.experiment_module(path)
    try:
        grid = sweep.parse_grid(module, args.grid or [])
        fixed = runner.parse_parameters(module, args.param or [])
        result = sweep.run_sweep(path, args.preset, grid, fixed, engine=args.engine, jobs=args.jobs,
                                 address=args.address, out_root=args.out, name=args.id)
    except sweep.SweepError as err:
        print(f"labkit sweep: {err}", file=sys.stderr)
        return 2
    reused = sum(o["reused"] for o in result.outcomes)
    print(f"labkit sweep: {len(result.outcomes)} points ({reused} reused, {len(result.failed)} failed) -> "
          f"{result.csv_path} and {result.parquet_path.name}")
    for outcome in result.failed:
        print(f"  FAILED {outcome['point']}: {outcome['error'].strip().splitlines()[-1] if outcome['error'] else ''}",
              file=sys.stderr)
    return 1 if result.failed else 0


def _explore(args: argparse.Namespace) -> int:
    from labkit import explorations

    try:
        if args.render:
            for path in sorted(runner.REPORTS_DIR.glob("*/explorations.md")):
                if not args.specs or path.parent.name in args.specs:
                    atomic_write_text(path, explorations.render_tables(path))
                    print(f"labkit explore: re-rendered the tables of {path.relative_to(runner.ROOT)}")
            return 0
        if not args.specs:
            for paper, declared in explorations.load().items():
                for name, exploration in declared.items():
                    note = f"  ({exploration.note.splitlines()[0]})" if exploration.note else ""
                    print(f"{paper}/{name}  [{exploration.preset}]  {exploration.answers}{note}")
            return 0
        failed = 0
        for spec in args.specs:
            exploration = explorations.find(spec)
            out, results = explorations.run(exploration, engine=args.engine, jobs=args.jobs, address=args.address,
                                            out_dir=args.out)
            failed += sum(len(r.failed) for r in results)
            print(f"labkit explore: {spec}: {sum(len(r.outcomes) for r in results)} points -> {out / 'table.csv'}")
    except (explorations.ExplorationError, ValueError) as err:
        print(f"labkit explore: {err}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _compare(args: argparse.Namespace) -> int:
    from labkit import compare

    try:
        png, summary = compare.compare(args.table, args.x, args.y, by=args.by, ref=args.ref, out=args.out,
                                       pair=args.pair)
    except ValueError as err:
        print(f"labkit compare: {err}", file=sys.stderr)
        return 2
    print(summary.to_string(index=False))
    print(f"labkit compare: figure -> {png}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    try:
        from labkit.data import sources  # loads and validates data/catalogue.toml

        for name in args.sources or sorted(sources.SOURCES):
            source = sources.SOURCES.get(name)
            if source is not None and source.kind not in sources.FETCHED_KINDS:
                print(f"labkit fetch: {name}: {sources.library_status(name)}")
            else:
                print(f"labkit fetch: {name} -> {sources.fetch(name, force=args.force)} (sha256 verified)")
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as err:  # catalogue, checksum, download
        print(f"labkit fetch: {err}", file=sys.stderr)
        return 1
    return 0


def _cache(args: argparse.Namespace) -> int:
    from labkit.data import cache

    if args.action == "clean":
        print(f"labkit cache: emptied {cache.clean()}")
    else:
        print(cache.cache_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="notebooks, presets and parameters").set_defaults(func=_list)
    run = sub.add_parser("run", help="execute one notebook into reports/<notebook>/<preset>/")
    run.add_argument("notebook", help="path or name, e.g. notebooks/profiling.ipynb or profiling")
    run.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default cpu)")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override one parameter; repeatable")
    run.add_argument("--out", type=Path, help="output folder (default reports/<notebook>/<preset>/)")
    run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=WAIT_HELP)
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="run every notebook whose inputs changed, then index reports/")
    report.add_argument("--preset", default="cpu")
    report.add_argument("--force", action="store_true", help="retrain every notebook, even up-to-date ones")
    report.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=WAIT_HELP)
    report.add_argument("notebooks", nargs="*", help="only these notebooks (default: all)")
    report.set_defaults(func=_report)
    sweep_cmd = sub.add_parser("sweep", help="execute a notebook once per grid point, in parallel, into one table")
    sweep_cmd.add_argument("notebook", help="path or name, e.g. notebooks/profiling.ipynb or profiling")
    sweep_cmd.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default cpu)")
    sweep_cmd.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                           help="a parameter and its values; repeat for a product grid")
    sweep_cmd.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                           help="a fixed parameter for every point; repeatable")
    sweep_cmd.add_argument("--engine", default="local", choices=["local", "ray"],
                           help="local: a process pool here (default); ray: Ray tasks")
    sweep_cmd.add_argument("--jobs", type=int, help="parallel runs (default: one per core)")
    sweep_cmd.add_argument("--address", help="Ray cluster: 'auto' or HOST:PORT (default: start a local Ray instance)")
    sweep_cmd.add_argument("--out", type=Path, help="sweeps folder (default reports/<notebook>/sweeps/)")
    sweep_cmd.add_argument("--id", help="sweep folder name (default: derived from notebook, preset and grid)")
    sweep_cmd.set_defaults(func=_sweep)
    explore = sub.add_parser("explore", help="run a declared exploration (labkit/experiments/explorations/*.toml) "
                                            "into reports/<paper>/explorations/<name>/; no argument: list them")
    explore.add_argument("specs", nargs="*", metavar="PAPER/NAME", help="explorations to run (with --render: papers)")
    explore.add_argument("--render", action="store_true",
                         help="re-render the CSV tables embedded in reports/<paper>/explorations.md")
    explore.add_argument("--engine", default="local", choices=["local", "ray"])
    explore.add_argument("--jobs", type=int, help="parallel runs (default: one per core)")
    explore.add_argument("--address", help="Ray cluster: 'auto' or HOST:PORT")
    explore.add_argument("--out", type=Path, help="output folder (default reports/<paper>/explorations/<name>/)")
    explore.set_defaults(func=_explore)
    compare_cmd = sub.add_parser("compare", help="mean and bootstrap 95 %% CI over seeds from a sweep table")
    compare_cmd.add_argument("table", type=Path, help="table.parquet / table.csv of a sweep, or its folder")
    compare_cmd.add_argument("--x", required=True, help="parameter on the x axis")
    compare_cmd.add_argument("--y", required=True, help="metric on the y axis")
    compare_cmd.add_argument("--by", help="arm column: one line per arm and paired differences to --ref")
    compare_cmd.add_argument("--ref", help="reference arm for paired differences (default: the first arm)")
    compare_cmd.add_argument("--out", type=Path, help="PNG path (default beside the table)")
    compare_cmd.add_argument("--pair", default="seed", help="column runs are paired on (default seed)")
    compare_cmd.set_defaults(func=_compare)
    fetch = sub.add_parser("fetch", help="download the offline data sources into the labkit cache")
    fetch.add_argument("sources", nargs="*", help="source names (default: all)")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(func=_fetch)
    cache_cmd = sub.add_parser("cache", help="show or empty the labkit cache")
    cache_cmd.add_argument("action", choices=["clean", "path"])
    cache_cmd.set_defaults(func=_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``labkit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (runner.ParameterError, runner.MissingExtra, FileNotFoundError, KeyError) as err:
        print(f"labkit {args.command}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # e.g. papermill, for `labkit run` without the notebooks extra
        missing = runner.missing_extra(err, "this command")
        if missing is None:
            raise
        print(f"labkit {args.command}: {missing}", file=sys.stderr)
        return 2
    except runner.OutputLocked as err:
        print(f"labkit {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
