"""Summarise every exploration pickle into a markdown table (printed)."""
import glob, pickle
import pandas as pd
from labkit.experiments import met2net as E
rows = []
for path in sorted(glob.glob("/tmp/m2n_explore/*.pkl")):
    r = pickle.load(open(path, "rb"))
    m = r["metrics"]; n = m[m.units == "normalised"]
    mean = n.groupby("arm").mse.mean(); sd = n.groupby(["arm", "seed"]).mse.mean().groupby("arm").std()
    pv = n.groupby(["variable", "arm"]).mse.mean().unstack()
    try:
        rel = E.relative_change(m).set_index("variable")
        t, rh, best = rel.loc["T", "relative_change_pct"], rel.loc["RH", "relative_change_pct"], \
            rel.loc["T", "best_baseline"] + "/" + rel.loc["RH", "best_baseline"]
    except Exception:
        t = rh = float("nan"); best = "-"
    seeds = n.seed.nunique()
    row = {"name": r["name"], "preset": r["preset"], "overrides": r["overrides"], "seeds": seeds,
           "wall_s": round(r["seconds"])}
    for arm in mean.index:
        row[arm] = f"{mean[arm]:.3f}±{sd[arm]:.3f}" if seeds > 1 else f"{mean[arm]:.3f}"
    row["met2net_T_vs_best_%"] = round(t, 1); row["met2net_RH_vs_best_%"] = round(rh, 1); row["best_baseline(T/RH)"] = best
    rows.append(row)
df = pd.DataFrame(rows)
cols = ["name", "preset", "overrides", "seeds", "wall_s", "persistence", "stacked", "stacked_wide", "pervar_e2e",
        "met2net", "pervar_explicit", "met2net_T_vs_best_%", "met2net_RH_vs_best_%", "best_baseline(T/RH)"]
df = df[[c for c in cols if c in df]].fillna("–")
print("| " + " | ".join(df.columns) + " |")
print("|" + "|".join(":--" if i < 3 else "--:" for i in range(len(df.columns))) + "|")
for _, r in df.iterrows():
    print("| " + " | ".join(str(v).replace("|", "/") for v in r) + " |")
