"""The answer first: a report's headline, built from its claims table (``tables/claims.csv``).

One sentence per claim family (a claim judged per task or dataset is one family: ``<group>: <name>``) in plain
words — premise met or not, then held / not held / inconclusive with the effect and its interval — and the claims
forest. :mod:`labkit.runner` puts it at the top of every HTML report and :mod:`labkit.index` at the top of
``reports/index.html``; the full claims table follows in the report itself.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

PREMISE_WORDS = {"held": "met", "not held": "NOT met (refuted)", "inconclusive": "unconfirmed (inconclusive)"}


def family(name: str) -> str:
    """The claim's family: its name without the ``<group>: `` prefix a per-task claim carries."""
    return name.rsplit(": ", 1)[-1]


def _member(row: pd.Series) -> str:
    from labkit.protocol import ALPHA, NOT_CHECKED  # here: `labkit list` works without scipy (the data extra)

    group = row["claim"].rsplit(": ", 1)[0] + " " if ": " in row["claim"] else ""
    raw = row.get("raw verdict", "") or row["verdict"]
    before = f", raw {raw}" if raw != row["verdict"] else ""
    holm = row.get("p (Holm)", float("nan"))
    if raw in ("held", "not held") and pd.notna(holm) and holm >= ALPHA:
        before += f"; Holm-adjusted p {holm:.2g}: inconclusive"
    flags = [f for f in str(row.get("sanity", "ok")).split("; ") if f and f not in ("ok", NOT_CHECKED)]
    if flags:
        before += f", {len(flags)} sanity flag(s); the interval alone: {row['interval verdict']}"
        if pd.notna(holm) and row["interval verdict"] in ("held", "not held"):
            before += f" (Holm-adjusted p {holm:.2g})"
    return f"{group}{row['effect']} (n={row['n']}{before})"


def sentences(claims: pd.DataFrame, sanity: pd.DataFrame | None = None) -> list[str]:
    """One plain sentence per claim family, premises first, in the table's order, each member with its effect,
    interval, n and (where the premise or Holm changed it) its raw verdict; then one sentence on the failed sanity
    checks when ``sanity`` (the report's ``sanity.csv``) is given."""
    out = []
    claims = claims.assign(_family=[family(n) for n in claims["claim"]])
    for name, rows in claims.groupby("_family", sort=False):
        role, text = rows["role"].iloc[0], rows["text"].iloc[0]
        words = PREMISE_WORDS if role == "premise" else {}
        parts = []
        for verdict, group in rows.groupby("verdict", sort=False):
            count = f" in {len(group)} of {len(rows)}" if len(rows) > 1 else ""
            members = "; ".join(_member(r) for _, r in group.iterrows())
            parts.append(f"{words.get(verdict, verdict)}{count}: {members}")
        label = "Premise" if role == "premise" else "Claim" if role == "main" else "Secondary"
        out.append(f"{label} — {text} [{name}]: " + " | ".join(parts) + ".")
    if sanity is not None and "flags" in sanity:
        flags = list(dict.fromkeys(f for text in sanity["flags"].fillna("") for f in str(text).split("; ") if f))
        if flags:
            shown = "; ".join(flags[:6]) + (f"; and {len(flags) - 6} more" if len(flags) > 6 else "")
            out.append(f"Sanity — {len(flags)} failed check(s): {shown}.")
        else:
            out.append("Sanity — every check passed.")
    return out


def forest_png(claims: pd.DataFrame) -> bytes:
    """The claims forest (:func:`labkit.views.claims.claims_forest`) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from labkit.views.claims import claims_forest
    from labkit.widgets import figure_png

    return figure_png(claims_forest(claims, xlabel="improvement (each claim's units; tick: its tolerance)"))


def read_sanity(report: Path) -> pd.DataFrame | None:
    """A report folder's sanity table, or None when it records none."""
    path = report / "tables" / "sanity.csv"
    return pd.read_csv(path, keep_default_na=False, dtype={"flags": str}) if path.is_file() else None


def provenance(meta: dict) -> str:
    """For a re-judged report (``meta["trained"]``): which training run its computed tables come from; else ""."""
    trained = meta.get("trained")
    if not trained:
        return ""
    sha = str(trained.get("labkit_git_sha") or "unknown")[:7]
    return (f"Re-judged: the verdicts above were judged by this report's code from the computed tables of a training "
            f"run at labkit {sha} ({trained.get('wall_seconds') or float('nan'):.0f} s wall, "
            f"{trained.get('kernel_cpu_seconds') or float('nan'):.0f} CPU s, {trained.get('threads')} thread(s)).")


def read_claims(report: Path) -> pd.DataFrame | None:
    """A report folder's claims table, or None when the notebook records none (not under the protocol)."""
    path = report / "tables" / "claims.csv"
    if not path.is_file():
        return None
    text = ("claim", "role", "group", "text", "paper (reference)", "effect", "tolerance", "raw verdict", "verdict",
            "sanity")
    table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={c: str for c in text})
    for column in text:
        if column in table:
            table[column] = table[column].fillna("")
    return table if "role" in table.columns else None


def html_block(claims: pd.DataFrame, title: str, link: str | None = None, sanity: pd.DataFrame | None = None,
               note: str = "") -> str:
    """The headline as an HTML section: title (linked), one sentence per claim family and one on the failed sanity
    checks, ``note`` (where the numbers come from, for a re-judged report), the forest figure."""
    heading = html.escape(title) if link is None else f'<a href="{html.escape(link)}">{html.escape(title)}</a>'
    items = "".join(f"<li>{html.escape(s)}</li>" for s in [*sentences(claims, sanity), *([note] if note else [])])
    image = base64.b64encode(forest_png(claims)).decode()
    return (f'<section class="labkit-headline"><h2>{heading}</h2><ul>{items}</ul>'
            f'<img alt="claims forest of {html.escape(title)}" src="data:image/png;base64,{image}" '
            'style="max-width:100%"></section>')
