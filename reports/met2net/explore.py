"""Exploration runner: python explore.py NAME '{"overrides": ...}' -> /tmp/m2n_explore/NAME.pkl"""
import json, pickle, sys, time
from labkit.experiments import met2net as E
name, ov = sys.argv[1], json.loads(sys.argv[2])
preset = ov.pop("_preset", "cpu")
cfg = E.configure(preset, {"progress": False, **ov})
t = time.time()
r = E.run(cfg)
out = {"name": name, "overrides": ov, "preset": preset, "seconds": time.time() - t, "metrics": r.metrics,
       "lead": r.lead, "history": r.history, "attention": r.attention, "cost": r.cost}
pickle.dump(out, open(f"/tmp/m2n_explore/{name}.pkl", "wb"))
m = r.metrics
print(name, ov, "seconds", round(out["seconds"]))
print(m[m.units == "normalised"].groupby(["arm"], sort=False).mse.agg(["mean", "std"]))
print(m[m.units == "normalised"].groupby(["variable", "arm"], sort=False).mse.mean().unstack())
print(E.relative_change(m)[["variable", "best_baseline", "relative_change_pct", "vs_stacked_pct"]])
print(r.cost)
