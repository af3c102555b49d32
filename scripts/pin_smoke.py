"""Pin smoke headline metrics: run notebooks with the smoke preset and write their values to tests/smoke_pins.toml.

Run it only after a deliberate change of a smoke result, and say why in the commit:
``.venv/bin/python scripts/pin_smoke.py met2net`` (the keys pinned per notebook are the ``keys`` patterns already in the
file; ``--keys 'mean_*'`` sets them for a notebook that has none). tests/test_notebooks.py compares each smoke run with
these values within ``rel`` (relative tolerance).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import tempfile
import tomllib
from pathlib import Path

from labkit import runner

PINS = Path(__file__).resolve().parents[1] / "tests" / "smoke_pins.toml"
DEFAULT_REL = 0.05  # smoke runs are deterministic here; 5 % absorbs float differences across CPUs, not a flipped result


def _format(pins: dict[str, dict]) -> str:
    lines = ["# Smoke headline metrics, pinned: a change that moves one beyond `rel` fails tests/test_notebooks.py.",
             "# Regenerate deliberately with scripts/pin_smoke.py NOTEBOOK and say why in the commit.", ""]
    for name in sorted(pins):
        entry = pins[name]
        lines += [f"[{name}]", f"rel = {entry['rel']!r}", "keys = [" + ", ".join(json.dumps(k) for k in entry["keys"])
                  + "]", f"[{name}.metrics]"]
        lines += [f"{json.dumps(k)} = {v!r}" for k, v in sorted(entry["metrics"].items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--keys", nargs="*", help="fnmatch patterns of metric names to pin")
    args = parser.parse_args()
    pins = tomllib.loads(PINS.read_text()) if PINS.is_file() else {}
    for name in args.notebooks:
        keys = args.keys or pins.get(name, {}).get("keys")
        if not keys:
            raise SystemExit(f"{name}: no keys pinned yet; pass --keys PATTERN ...")
        with tempfile.TemporaryDirectory() as tmp:
            result = runner.run_notebook(runner.resolve_notebook(name), "smoke", out_dir=Path(tmp) / "smoke")
            if not result.ok:
                raise SystemExit(f"{name}: smoke run failed: {result.error}")
            metrics = json.loads((result.out_dir / "results.json").read_text())["metrics"]
        chosen = {k: v for k, v in metrics.items() if any(fnmatch.fnmatch(k, p) for p in keys)}
        if not chosen:
            raise SystemExit(f"{name}: no metric matches {keys}; metrics: {sorted(metrics)}")
        pins[name] = {"rel": pins.get(name, {}).get("rel", DEFAULT_REL), "keys": list(keys), "metrics": chosen}
        print(f"{name}: pinned {len(chosen)} metrics")
    PINS.write_text(_format(pins))


if __name__ == "__main__":
    main()
