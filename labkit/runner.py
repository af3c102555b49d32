"""Execute notebooks with papermill into report folders: validated parameters, atomic results, resumable reports.

A notebook ``notebooks/<name>.ipynb`` belongs to the experiment module ``labkit.experiments.<name>``, whose
``Config`` dataclass and ``PRESETS`` are the source of truth for parameter names, types and defaults.

One writer per report folder: a run holds ``<out>.lock`` (``fcntl.flock``, released by the kernel when the holder
dies, even by SIGKILL), executes into its own ``<out>.partial-<pid>-<token>/`` and swaps the finished folder in by
renames, so runs started together, or killed at any point, never publish a report mixing two runs.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import importlib
import json
import os
import re
import resource
import secrets
import shutil
import time
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import closure
from labkit.config import type_name
from labkit.data import sources
from labkit.experiments import REUSE_ENV
from labkit.jobs import CACHE_ENV
from labkit.report import REPORT_DIR_ENV, RESULTS_FILE, atomic_write_text, to_jsonable

ROOT = sources.ROOT  # the repository (labkit is installed editable)
NOTEBOOK_DIR = ROOT / "notebooks"
REPORTS_DIR = ROOT / "reports"
RUNNER_DEFAULTS = {"widgets": True, "reuse": False}  # notebook parameters that are not fields of the Config
RUNNER_PARAMS = {name: type(value) for name, value in RUNNER_DEFAULTS.items()}
JOBS_SUFFIX = ".jobs"  # <out>.jobs/<compute digest>/: finished training jobs of an unfinished run (labkit.jobs)
LOCK_POLL_SECONDS = 0.2  # how often a run waiting for a report folder's lock tries again
UNINDEXED_REPORTS = ("smoke", "sweeps")  # report folders (and their ``-variant``s) that are not committed
KERNEL_LOG = "kernel.log"  # the kernel process's own stdout and stderr, in the staging folder; kept on failure only
PYPROJECT = ROOT / "pyproject.toml"  # its ``optional-dependencies`` say which extra installs which package
IMPORT_NAMES = {"scikit-learn": "sklearn"}  # extras' packages imported under another name (others: name, - as _)


class ParameterError(ValueError):
    """A ``-p NAME VALUE`` that names no parameter or does not parse as the parameter's type."""


class OutputLocked(RuntimeError):
    """Another live run is writing the same report folder."""


class MissingExtra(ImportError):
    """Code needs a package that one of labkit's optional extras installs, and that extra is not installed."""


def extra_providing(module: str) -> str | None:
    """The first optional extra in ``pyproject.toml`` that installs the top-level module ``module`` (``scipy`` ->
    ``data``, ``ray`` -> ``sweep``), or None when no extra does."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        for requirement in requirements:
            package = re.match(r"[A-Za-z0-9._-]+", requirement).group().lower()
            if IMPORT_NAMES.get(package, package.replace("-", "_").replace(".", "_")) == module:
                return extra
    return None


def missing_extra(err: ModuleNotFoundError, needed_by: str) -> MissingExtra | None:
    """``err`` as the sentence a user acts on (``notebook cmixup.ipynb needs the 'data' extra (scipy is not
    installed): pip install -e ".[data]"``), or None when the missing module comes with no extra."""
    missing = (err.name or "").partition(".")[0]
    extra = extra_providing(missing) if missing else None
    if extra is None:
        return None
    return MissingExtra(f"{needed_by} needs the {extra!r} extra ({missing} is not installed): "
                        f'pip install -e ".[{extra}]"')


def notebooks() -> list[Path]:
    """The paper notebooks under ``notebooks/``, sorted by name."""
    return sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb"))


def resolve_notebook(name: str | Path) -> Path:
    """A notebook path from a path or a bare name (``gateskip``), with the known ones listed if it is missing."""
    path = Path(name)
    candidates = [path, NOTEBOOK_DIR / path.name, NOTEBOOK_DIR / f"{path.name}.ipynb"]
    for candidate in candidates:
        if candidate.suffix == ".ipynb" and candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"no notebook {str(name)!r}; known: {[p.stem for p in notebooks()]}")


def experiment_name(notebook: Path) -> str:
    """The experiment module name of a notebook, without importing it (see ``experiment_module``)."""
    metadata = json.loads(notebook.read_text()).get("metadata", {})
    return metadata.get("labkit", {}).get("experiment") or f"labkit.experiments.{notebook.stem}"


def experiment_module(notebook: Path) -> types.ModuleType:
    """The experiment module of a notebook: ``labkit.experiments.<stem>``, or the module named in the notebook's
    metadata ``{"labkit": {"experiment": "package.module"}}`` (for notebooks outside ``notebooks/``).

    Raises ``MissingExtra`` naming the extra to install when the module imports a package of one that is missing.
    """
    name = experiment_name(notebook)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = missing_extra(err, f"notebook {notebook.name}")
        if missing is not None:
            raise missing from err
        raise ParameterError(f"notebook {notebook.name} has no experiment module {name}: {err}") from err
    for attr in ("Config", "PRESETS"):
        if not hasattr(module, attr):
            raise ParameterError(f"{name} (the experiment of {notebook.name}) lacks {attr}")
    return module


def parameter_types(module: types.ModuleType) -> dict[str, Any]:
    """Parameter name -> type for a notebook: its Config's fields plus the runner's own (``widgets``)."""
    hints = typing.get_type_hints(module.Config)
    return {**{f.name: hints[f.name] for f in dataclasses.fields(module.Config)}, **RUNNER_PARAMS}


def coerce(name: str, text: str, tp: Any) -> Any:
    """Parse the command-line string ``text`` as type ``tp`` (bool, int, float, str, tuples/lists, optionals)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(name, text, arg)
            except ParameterError:
                continue
        raise ParameterError(f"parameter {name!r} expects {type_name(tp)}, got {text!r}")
    bad = ParameterError(f"parameter {name!r} expects {type_name(tp)}, got {text!r}")
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise bad
    if tp is str:
        return text
    if tp in (int, float):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value,
                                                                                                           int)):
            raise bad
        return tp(value)
    if origin in (list, tuple):
        return _coerce_sequence(name, text, tp)
    if origin is dict or tp is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise bad from None
        if not isinstance(value, dict):
            raise bad
        return value
    raise ParameterError(f"parameter {name!r} has type {type_name(tp)}, which cannot be set from the command line")


def _coerce_sequence(name: str, text: str, tp: Any) -> list | tuple:
    """A list or tuple parameter from a literal (``[16, 32]``, ``("text",)``) or comma-separated text (``16,32``).

    Empty entries (``16,,32``, ``,``, an empty string) are rejected rather than dropped; a fixed-length tuple
    (``tuple[float, float]``) must get exactly that many values.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    fixed = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
    try:  # a Python/JSON literal such as ["text", "cumsum"] or (1, 2)
        literal = ast.literal_eval(text) if text.strip()[:1] in ("[", "(") else None
    except (ValueError, SyntaxError):
        raise ParameterError(f"parameter {name!r} expects {type_name(tp)}, got {text!r}") from None
    if isinstance(literal, (list, tuple)):
        items = list(literal)
    else:  # comma-separated: text,cumsum
        items = [t.strip() for t in text.split(",")]
        if any(not t for t in items):
            raise ParameterError(f"parameter {name!r} expects {type_name(tp)} as comma-separated values with no "
                                 f"empty entry (e.g. 16,32; [] for an empty list), got {text!r}")
    if fixed and len(items) != len(args):
        raise ParameterError(f"parameter {name!r} expects {type_name(tp)}: {len(args)} values, got {len(items)} "
                             f"in {text!r}")
    inners = list(args) if fixed else [args[0] if args else str] * len(items)
    values = [item if isinstance(item, str) and inner is str else coerce(name, str(item), inner)
              for item, inner in zip(items, inners, strict=True)]
    return tuple(values) if origin is tuple else values


def parse_parameters(module: types.ModuleType, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Validate and type ``-p NAME VALUE`` pairs before anything runs; unknown names list the accepted ones."""
    types_ = parameter_types(module)
    parsed = {}
    for name, text in pairs:
        if name == "preset":
            raise ParameterError("set the preset with --preset, not -p preset")
        if name not in types_:
            raise ParameterError(f"unknown parameter {name!r} for {module.__name__}; accepted: {sorted(types_)}")
        parsed[name] = coerce(name, text, types_[name])
    return parsed


def check_params(notebook: Path, preset: str, params: dict[str, Any]) -> None:
    """Raise ``ParameterError`` for an unknown preset or parameter name, or a value the experiment's ``configure``
    rejects (type or range), before a kernel starts: ``labkit run``, ``labkit sweep`` (every point) and
    ``labkit explore`` all check through here, so a bad value fails in seconds with the same message."""
    module = experiment_module(notebook)
    unknown = sorted(set(params) - set(parameter_types(module)))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} for {module.__name__}; "
                             f"accepted: {sorted(parameter_types(module))}")
    if preset not in module.PRESETS:
        raise ParameterError(f"unknown preset {preset!r} for {notebook.stem}; expected one of {sorted(module.PRESETS)}")
    try:
        module.configure(preset, {k: v for k, v in params.items() if k not in RUNNER_PARAMS})
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{notebook.stem} --preset {preset}: {err}") from err


def input_digests(notebook: Path, preset: str, params: dict[str, Any]) -> dict[str, str]:
    """What decides a run's results, one sha256 each: the notebook file, the preset and parameters, the labkit code
    it can run (the import closure of its experiment module and of its own imports, ``labkit.closure``), the part of
    that code which trains (``compute``: the experiment's ``arms`` room and below) and the data catalogue entries that
    notebook or that code reads (a new pinned data version makes the run stale too). An edit outside the closure, or
    of a source it does not read, changes none; an edit outside the compute closure only needs a re-judge."""
    files = closure.closure_files(experiment_name(notebook), notebook)
    compute = closure.compute_files(experiment_name(notebook))
    return {
        "notebook": hashlib.sha256(notebook.read_bytes()).hexdigest(),
        "params": hashlib.sha256(json.dumps({"preset": preset, "params": to_jsonable(params)},
                                            sort_keys=True).encode()).hexdigest(),
        "code": closure.source_hash(files),
        "compute": closure.source_hash(compute if compute is not None else files),
        "catalogue": catalogue_digest({notebook, *files}),
    }


COMPUTE_INPUTS = ("params", "compute", "catalogue")  # what training depends on; the rest only changes the judgement


def catalogue_digest(readers: set[Path]) -> str:
    """A sha256 over the catalogue entries whose ``used_by`` names one of ``readers`` (a notebook and its closure):
    pinning a new source, or a new version of a source another notebook reads, leaves this run's inputs unchanged."""
    names = {_repo_path(path) for path in readers}
    used = [dataclasses.asdict(source) for name, source in sorted(sources.load_catalogue(sources.CATALOGUE).items())
            if names.intersection(source.used_by)]
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


def _repo_path(path: Path) -> str:
    """``path`` relative to the repository, as the catalogue's ``used_by`` writes it (absolute when outside it)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def inputs_hash(notebook: Path, preset: str, params: dict[str, Any]) -> str:
    """One hash of ``input_digests``: a report whose ``meta.inputs_hash`` differs is stale."""
    return _combined(input_digests(notebook, preset, params))


def _combined(digests: dict[str, str]) -> str:
    """The inputs hash of a run from its ``input_digests``."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


STALE_REASONS = {"notebook": "notebook changed", "params": "preset or parameters changed",
                 "code": "labkit code in its import closure changed",
                 "compute": "its training code (compute closure) changed",
                 "catalogue": "a data source it reads changed in the catalogue"}


def can_rejudge(out_dir: Path, digests: dict[str, str]) -> bool:
    """Whether the report in ``out_dir`` can be brought up to date by judging its computed tables again (seconds)
    instead of retraining: it is complete, stores its computed tables, and its parameters, training code and data
    are those of this run (only judgement code, views or the notebook changed)."""
    meta = _read_meta(out_dir)
    if meta is None or meta.get("status") != "ok" or not isinstance(meta.get("inputs"), dict):
        return False
    try:
        stored = json.loads((Path(out_dir) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return "computed" in stored and all(meta["inputs"].get(k) == digests[k] for k in COMPUTE_INPUTS)


def stale_reason(out_dir: Path, digests: dict[str, str]) -> str:
    """Why the report in ``out_dir`` is stale for a run with these ``input_digests`` (e.g. ``labkit code in its import
    closure changed``), or ``""`` when it is up to date."""
    meta = _read_meta(out_dir)
    if meta is None:
        return f"no readable {RESULTS_FILE}"
    digest = _combined(digests)
    if is_up_to_date(out_dir, digest):
        return ""
    if meta.get("status") != "ok" or meta.get("inputs_hash") == digest:
        return "incomplete report (status not ok, or its notebook or HTML is missing)"
    recorded = meta.get("inputs")
    if not isinstance(recorded, dict):
        return "made before per-input hashes were recorded"
    changed = [STALE_REASONS[k] for k in digests if recorded.get(k) != digests[k]]
    reason = ", ".join(changed) or "inputs hash differs"
    if can_rejudge(out_dir, digests):
        reason += " (training unchanged: `labkit report` re-judges it from its computed tables in seconds)"
    return reason


def _children_cpu_seconds() -> float:
    """CPU seconds of finished child processes (the notebook's kernel once it has exited). On a loaded machine this,
    not the wall time, tells what a run would take on idle cores with the preset's thread count."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def default_out_dir(notebook: Path, preset: str) -> Path:
    """``reports/<notebook>/<preset>/``."""
    return REPORTS_DIR / notebook.stem / preset


@dataclass
class RunResult:
    """Where a run wrote and what it found."""

    notebook: Path
    out_dir: Path
    ok: bool
    skipped: bool = False  # inputs unchanged since the last successful run
    rejudged: bool = False  # only judgement changed: judged again from the committed report's computed tables
    wall_seconds: float = 0.0
    error: str = ""


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    """The ``meta`` of a report's ``results.json``; None when it is missing, unreadable or not a JSON object."""
    try:
        meta = json.loads((Path(out_dir) / RESULTS_FILE).read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) else None


def is_up_to_date(out_dir: Path, digest: str) -> bool:
    """A previous successful run with the same inputs left a complete report in ``out_dir``.

    Complete means ``results.json`` with status ok and this inputs hash, and the executed notebook and its HTML
    beside it: a folder that a killed run left half-way is never taken for a finished report.
    """
    meta = _read_meta(out_dir)
    if meta is None:
        return False
    notebook = meta.get("notebook")
    if meta.get("inputs_hash") != digest or meta.get("status") != "ok" or not isinstance(notebook, str) or not notebook:
        return False
    return (Path(out_dir) / notebook).is_file() and (Path(out_dir) / f"{Path(notebook).stem}.html").is_file()


def lock_path(out_dir: Path) -> Path:
    """The lock file of a report folder: ``<out>.lock`` beside it."""
    return out_dir.with_name(out_dir.name + ".lock")


@contextlib.contextmanager
def out_dir_lock(out_dir: Path, wait: float = 0.0) -> Iterator[Path]:
    """Hold the report folder's lock (``fcntl.flock`` on ``<out>.lock``, which records the holder's pid).

    The operating system drops the lock when its holder exits or is killed, so a dead run never blocks the next.
    A live holder is waited for up to ``wait`` seconds (0: not at all), then ``OutputLocked`` names it.
    """
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise OutputLocked(
                    f"report folder {out_dir} is being written by another run (pid {holder}, lock {path}); "
                    f"wait for it to finish (--wait SECONDS) or write elsewhere (--out DIR)"
                ) from None
            time.sleep(LOCK_POLL_SECONDS)
            continue
        try:  # the previous holder unlinks the file on release: a lock on an unlinked file protects nothing
            held = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            held = False
        if held:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _run_folder(out_dir: Path, kind: str) -> Path:
    """A folder of this run beside ``out_dir``: ``<out>.<kind>-<pid>-<token>`` (``kind`` is partial or old)."""
    return out_dir.with_name(f"{out_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _siblings(out_dir: Path, kind: str) -> list[Path]:
    """The ``_run_folder``s of ``kind`` that runs of ``out_dir`` left beside it, oldest first."""
    pattern = re.compile(rf"{re.escape(out_dir.name)}\.{kind}-\d+-[0-9a-f]{{8}}")
    found = out_dir.parent.glob(f"{glob.escape(out_dir.name)}.{kind}-*")
    return sorted((p for p in found if pattern.fullmatch(p.name) and p.is_dir()), key=lambda p: p.stat().st_ctime)


def _recover(out_dir: Path) -> None:
    """Undo what killed runs of ``out_dir`` left behind; call only under its lock, when no one else uses them.

    A run killed between moving the old report aside and moving its new one in leaves no ``out_dir`` and an
    ``<out>.old-*``: that report is put back. Other ``.old-*`` and every ``.partial-*`` folder are deleted.
    """
    old = _siblings(out_dir, "old")
    if old and not out_dir.exists():
        old.pop().rename(out_dir)
    legacy = out_dir.with_name(out_dir.name + ".partial")  # the fixed staging folder of earlier versions
    for stale in [*old, *_siblings(out_dir, "partial"), *([legacy] if legacy.is_dir() else [])]:
        shutil.rmtree(stale, ignore_errors=True)


def _replace(staging: Path, out_dir: Path) -> None:
    """Publish a finished run: the old report is renamed aside, the new one renamed in, then the old one deleted.

    Every step is a rename within one folder, so a kill at any point leaves either a complete ``out_dir`` or an
    ``<out>.old-*`` that the next run puts back (``_recover``); there is never a half-deleted report.
    """
    aside = None
    if out_dir.exists():
        aside = _run_folder(out_dir, "old")
        out_dir.rename(aside)
    staging.rename(out_dir)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def export_html(executed: Path, html_path: Path) -> None:
    """The executed notebook as standalone HTML (figures embedded), written atomically.

    A report reads as a paper: it opens with the headline (:mod:`labkit.headline`: one sentence per claim family and
    the claims forest, from the ``tables/claims.csv`` beside it), code cells are hidden (the executed ``.ipynb``
    keeps them) and stderr (library progress bars and warnings) is left out.
    """
    import nbformat
    from nbconvert import HTMLExporter

    from labkit import headline

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not (o.output_type == "stream" and
                                                                        o.get("name") == "stderr")]
    body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
                           ).from_notebook_node(nb)
    claims = headline.read_claims(html_path.parent)
    if claims is not None:
        meta = _read_meta(html_path.parent) or {}
        top = headline.html_block(claims, f"{executed.stem}: the answer first",
                                  sanity=headline.read_sanity(html_path.parent), note=headline.provenance(meta))
        anchor = "<main>" if "<main>" in body else "<body"
        at = body.index(anchor)
        at = body.index(">", at) + 1
        body = body[:at] + top + body[at:]
    atomic_write_text(html_path, body)


def report_variants(notebook: Path, preset: str) -> list[tuple[str, dict[str, Any]]]:
    """The reports ``labkit report --preset P`` makes for a notebook: ``(folder name, parameters)`` pairs.

    Always ``(P, {})`` into ``reports/<nb>/<P>/``; an experiment module may add named variants of a preset in
    ``REPORT_VARIANTS = {P: {name: parameters}}``, each into ``reports/<nb>/<P>-<name>/`` (e.g. a second task whose
    result differs, so it is reported rather than left to a footnote).
    """
    module = experiment_module(notebook)
    extra = getattr(module, "REPORT_VARIANTS", {}).get(preset, {})
    return [(preset, {}), *((f"{preset}-{name}", dict(params)) for name, params in extra.items())]


def _literal(value: Any) -> Any:
    """Tuples as lists: papermill writes a tuple inside a dict parameter as its repr string, a list as a list."""
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def run_notebook(notebook: str | Path, preset: str = "cpu", params: dict[str, Any] | None = None,
                 out_dir: str | Path | None = None, force: bool = True, progress: bool = True,
                 wait: float = 0.0, digests: dict[str, str] | None = None) -> RunResult:
    """Execute one notebook with papermill into ``out_dir`` (default ``reports/<notebook>/<preset>/``).

    Parameters are validated first. The run holds ``<out_dir>.lock`` throughout: while another live run holds it,
    this one waits up to ``wait`` seconds (default: not at all) and then raises ``OutputLocked`` naming the holder's
    pid. It executes into its own ``<out_dir>.partial-<pid>-<token>/`` and replaces ``out_dir`` only on success, by
    renames, so a killed or failed run never leaves a half-written or half-deleted report; what killed runs left is
    cleaned (or put back) by the next run. A failure keeps the partial executed notebook in ``<out_dir>.failed/``.
    ``digests`` are this run's ``input_digests`` when the caller has them already (``labkit report``).

    Without ``force``, a report whose training inputs are unchanged (``can_rejudge``) is re-judged: the notebook runs
    with ``reuse=True`` on the committed report's computed tables, in seconds. A training run caches its finished
    jobs in ``<out_dir>.jobs/<compute digest>/`` (:mod:`labkit.jobs`), so a killed run resumes where it stopped; the
    cache goes when the report is published.
    """
    path = resolve_notebook(notebook)
    params = dict(params or {})
    check_params(path, preset, params)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path, preset)
    digests = digests or input_digests(path, preset, params)
    digest = _combined(digests)
    with out_dir_lock(out, wait):
        _recover(out)
        if not force and is_up_to_date(out, digest):
            return RunResult(path, out, ok=True, skipped=True)
        rejudge = not force and not params.get("reuse") and can_rejudge(out, digests)
        jobs = out.with_name(out.name + JOBS_SUFFIX)
        staging = _run_folder(out, "partial")
        staging.mkdir(parents=True)
        try:
            env = {REUSE_ENV: str(out.resolve())} if rejudge else {CACHE_ENV: str(jobs / digests["compute"][:16])}
            error, wall = _execute(path, preset, {**params, "reuse": True} if rejudge else params, digests, staging,
                                   progress, env, _read_meta(out) if rejudge else None)
            if error:
                failed = out.with_name(out.name + ".failed")  # kept for inspection, replacing an older one
                shutil.rmtree(failed, ignore_errors=True)
                staging.rename(failed)
                kept = {"partial executed notebook": failed / path.name,
                        "the kernel process's own output": failed / KERNEL_LOG}
                where = [f"{what}: {file}" for what, file in kept.items() if file.is_file()]
                error = "\n".join([*where, error])  # the error last: its last line is the exception
                return RunResult(path, out, ok=False, wall_seconds=wall, error=error)
            if rejudge:
                _keep_training_files(out, staging)
            _replace(staging, out)
            shutil.rmtree(jobs, ignore_errors=True)
            return RunResult(path, out, ok=True, rejudged=rejudge, wall_seconds=wall)
        finally:  # an interrupted run (Ctrl-C) leaves nothing; a killed one is cleaned up by the next run
            shutil.rmtree(staging, ignore_errors=True)


def _keep_training_files(report: Path, staging: Path) -> None:
    """Carry into a re-judge's ``staging`` folder the files the trained run wrote beside its report and the re-judge
    does not write again (``report.output_path``: profiling's ``trace.json``); only top-level files, so a figure or
    table the judgement no longer makes is not kept."""
    for file in report.iterdir():
        if file.is_file() and not (staging / file.name).exists():
            shutil.copy2(file, staging / file.name)


@functools.cache
def _kernel_manager_class() -> type:
    """A jupyter_client kernel manager that starts the kernel with its process's stdout and stderr in a file (its
    ``log_path``) instead of this console's: there ipykernel logs its own noise ("KeyboardInterrupt caught in kernel"
    when jupyter_client interrupts it to shut it down, a warning about TCP) and echoes C-level output (torch's
    profiler "USDT ... profiler_start" lines) that it also forwards to the notebook. Made on first use:
    jupyter_client comes with the notebooks extra."""
    from jupyter_client import AsyncKernelManager
    from traitlets import Unicode

    class LoggedKernelManager(AsyncKernelManager):
        log_path = Unicode(help="the file that receives the kernel process's stdout and stderr").tag(config=True)

        async def start_kernel(self, **kw: Any) -> None:
            with open(self.log_path, "ab") as log:  # the kernel keeps its own copy of the descriptor
                await super().start_kernel(**{"stdout": log, "stderr": log, **kw})

    return LoggedKernelManager


def _execute(path: Path, preset: str, params: dict[str, Any], digests: dict[str, str], staging: Path,
             progress: bool, env: dict[str, str] | None = None,
             trained: dict[str, Any] | None = None) -> tuple[str, float]:
    """Papermill into ``staging`` with ``env`` set for the kernel, then stamp its results and export HTML:
    ``("", wall seconds)`` on success, else the error and the wall seconds. ``trained`` is the meta of the report
    being re-judged: its training cost and code version are kept under ``meta.trained``. The kernel process's own
    output goes to ``staging/kernel.log``, not the console; a successful run deletes it."""
    import papermill
    from traitlets.config import Config

    executed = staging / path.name
    overrides = {k: _literal(v) for k, v in params.items() if k not in RUNNER_PARAMS}
    notebook_params = {"preset": preset, "overrides": overrides, **{k: params[k] for k in RUNNER_PARAMS if k in params}}
    env = dict(env or {})
    env_before = {k: os.environ.get(k) for k in (REPORT_DIR_ENV, "HF_HUB_OFFLINE", "MPLBACKEND", REUSE_ENV,
                                                 CACHE_ENV)}
    os.environ.pop(REUSE_ENV, None)
    os.environ.pop(CACHE_ENV, None)
    os.environ.update({REPORT_DIR_ENV: str(staging.resolve()), "HF_HUB_OFFLINE": "1", **env})
    os.environ.pop("MPLBACKEND", None)  # the kernel picks the inline backend itself
    start, children_before = time.perf_counter(), _children_cpu_seconds()
    try:
        manager = _kernel_manager_class()
        papermill.execute_notebook(str(path), str(executed), parameters=notebook_params, kernel_name="python3",
                                   progress_bar=progress, cwd=str(path.parent), kernel_manager_class=manager,
                                   config=Config({manager.__name__: {"log_path": str(staging / KERNEL_LOG)}}))
    except Exception as err:  # papermill raises its own error for a failing cell; keep the evidence
        return f"{type(err).__name__}: {str(err).strip()[-2000:]}", time.perf_counter() - start
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    wall, cpu = time.perf_counter() - start, _children_cpu_seconds() - children_before
    (staging / KERNEL_LOG).unlink(missing_ok=True)
    results_path = staging / RESULTS_FILE
    if not results_path.is_file():
        return f"{path.name} ran but never called labkit.report.record (no {RESULTS_FILE})", wall
    results = json.loads(results_path.read_text())
    results["meta"].update({"preset": preset, "notebook": path.name, "wall_seconds": round(wall, 2),
                            "kernel_cpu_seconds": round(cpu, 2),
                            "inputs_hash": _combined(digests), "inputs": digests, "status": "ok"})
    if trained is not None:  # a re-judge: the training it judged is the committed report's
        results["meta"]["trained"] = trained.get("trained") or {
            k: trained.get(k) for k in ("labkit_git_sha", "wall_seconds", "kernel_cpu_seconds", "load_average_1min",
                                        "torch", "transformers", "device_name", "threads")}
    atomic_write_text(results_path, json.dumps(results, indent=1, sort_keys=True) + "\n")
    export_html(executed, staging / f"{path.stem}.html")
    return "", wall


def is_committed_report(folder: Path, reports_dir: Path = REPORTS_DIR) -> bool:
    """Whether ``reports/<notebook>/<folder>/`` is a report that belongs in git and in the index: a preset or a
    preset variant, not smoke (CI-only, gitignored), not sweeps, not a run's ``.partial-*``/``.old-*``/``.failed``."""
    rel = folder.relative_to(reports_dir)
    name = rel.parts[-1]
    return len(rel.parts) == 2 and "." not in name and name.split("-")[0] not in UNINDEXED_REPORTS
