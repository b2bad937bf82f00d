#!/usr/bin/env python3
"""Which sensitivity predicts widening? Reads a sensitivity-truth run folder
(scripts/experiments/sensitivity-truth.sh) and prints, per width slot, the measured gain of
widening it (probe − control, validation accuracy, mean over seeds) beside each measure's slot
score, then each measure's Spearman rho against the truth with a 95 % Fisher-z interval.

    python3 scripts/experiments/truth-table.py runs/sensitivity-truth/mobilenetv2x0.35 [--json]
"""
import csv
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
from rankstats import spearman  # noqa: E402

MEASURES = ("one_off_gain", "fit")


def last_acc(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return 100.0 * rows[-1]["test_acc"] if rows else None


def fisher_interval(rho, n):
    if n < 4 or not math.isfinite(rho) or abs(rho) >= 1:
        return (float("nan"), float("nan"))
    z, se = math.atanh(rho), 1.96 / math.sqrt(n - 3)
    return (math.tanh(z - se), math.tanh(z + se))


def slot_scores(run, measure):
    """Per slot: the sum over the layers whose channels it sets (negative/NaN count as 0);
    None where no layer of the slot was measured (as src/sensitivity/slots.rs)."""
    slots = json.load(open(os.path.join(run, "cost.json")))["slots"]
    with open(os.path.join(run, "sensitivity", "sensitivity.csv")) as f:
        table = {r["layer"]: float(r.get(measure, "nan")) for r in csv.DictReader(f)}
    out = {}
    for s in slots:
        vals = [table[name] for name in s["layers"] if name in table]
        out[s["slot"]] = sum(v if v > 0 else 0.0 for v in vals if math.isfinite(v)) if vals else None
    return out, {s["slot"]: s["layer"] for s in slots}


def truth(run):
    seeds = sorted({d.split("-s")[1] for d in os.listdir(run) if d.startswith("control-s")})
    gains = {}
    for seed in seeds:
        ctl = os.path.join(run, f"control-s{seed}", "metrics.jsonl")
        if not os.path.exists(ctl):
            continue
        base = last_acc(ctl)
        for d in os.listdir(run):
            if d.startswith("slot") and d.endswith(f"-s{seed}"):
                m = os.path.join(run, d, "metrics.jsonl")
                if os.path.exists(m) and last_acc(m) is not None:
                    gains.setdefault(int(d[4:].split("-")[0]), []).append(last_acc(m) - base)
    return gains, seeds


def main():
    run = sys.argv[1]
    gains, seeds = truth(run)
    if not gains:
        print(f"{run}: no finished probes yet")
        return
    names = None
    result = {"seeds": seeds, "slots": {}, "measures": {}}
    scores = {}
    for m in MEASURES:
        scores[m], names = slot_scores(run, m)
    print(f"{'slot':>4} {'layer':<22} {'truth (pp)':>11} {'seeds':>5} " + " ".join(f"{m:>13}" for m in MEASURES))
    for k in sorted(gains):
        g = statistics.mean(gains[k])
        result["slots"][k] = {"layer": names.get(k), "truth": g, "seeds": len(gains[k]), **{m: scores[m].get(k) for m in MEASURES}}
        cols = " ".join(f"{scores[m][k]:>13.4g}" if scores[m].get(k) is not None else f"{'—':>13}" for m in MEASURES)
        print(f"{k:>4} {names.get(k, '?'):<22} {g:>+11.3f} {len(gains[k]):>5} {cols}")
    for m in MEASURES:
        ks = [k for k in sorted(gains) if scores[m].get(k) is not None]
        rho = spearman([scores[m][k] for k in ks], [statistics.mean(gains[k]) for k in ks]) if len(ks) > 2 else float("nan")
        lo, hi = fisher_interval(rho, len(ks))
        result["measures"][m] = {"rho": rho, "lo": lo, "hi": hi, "n": len(ks)}
        print(f"{m}: Spearman rho {rho:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}] over {len(ks)} slots")
    if "--json" in sys.argv:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
