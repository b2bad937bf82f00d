#!/usr/bin/env python3
"""The issue-4 experiment table from a run folder of scripts/experiments/nce-fashion-mnist.sh.

Rows: uniform W2A2, NCE and TAS (expansion off), each with its costs relative to the base
network and the final test accuracy per seed (mean ± sample std over the seeds found). Then the
Spearman correlation between each searched layer's width ratio (width / base) and its 2-bit
sensitivity (`nce sensitivity` of the FP32 model, both of its measures).
Standard library only (tomllib needs Python >= 3.11).
"""
import json, math, statistics, sys, tomllib
sys.path.insert(0, str(__import__('pathlib').Path(__file__).parent))
from rankstats import spearman  # noqa: E402
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/nce-fashion")

def final_accs(name):
    accs = {}
    for d in sorted(out.glob(f"final-{name}-s*")):
        m = d / "metrics.jsonl"
        if not m.is_file():
            continue
        lines = [json.loads(l) for l in m.read_text().splitlines() if l.strip()]
        if lines:
            accs[d.name.rsplit("-s", 1)[1]] = (100 * lines[-1]["test_acc"], len(lines))
    return accs

def fmt_accs(accs):
    if not accs:
        return "–", "–"
    per = ", ".join(f"s{s}: {a:.2f} ({e} ep)" for s, (a, e) in sorted(accs.items()))
    v = [a for a, _ in accs.values()]
    ms = f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f} (1 seed)"
    return per, ms

rows = [("uniform W2A2", "uniform", None)]
for name, label in [("nce", "NCE W2A2"), ("tas", "TAS W2A2 (T = ∞)")]:
    f = out / name / "arch.toml"
    rows.append((label, name, tomllib.loads(f.read_text()) if f.is_file() else None))

print("| network | MACs | params | budgets | expansions | widths | final test acc per seed | mean ± std |")
print("|---|---:|---:|---|---:|---|---|---:|")
for label, name, arch in rows:
    per, ms = fmt_accs(final_accs(name))
    if arch is None:
        print(f"| {label} | 1.000× | 1.000× | base | – | base | {per} | {ms} |")
        continue
    if arch["widths"] == arch["base_widths"] and not final_accs(name):
        # The search kept every base width: this is the uniform network, trained once.
        per, ms = fmt_accs(final_accs("uniform"))
        per = "= uniform W2A2 (same network): " + per
    cost = {c["metric"]: c["value"] / c["base"] for c in arch["costs"]}
    verdict = "all met" if all(b["pass"] for b in arch["budgets"]) else "FAIL: " + ", ".join(b["metric"] for b in arch["budgets"] if not b["pass"])
    if arch.get("repaired"):
        verdict += f" after {len(arch['repaired'])} repair steps"
    widths = " ".join(str(w) for w in arch["widths"])
    print(f"| {label} | {cost.get('macs', float('nan')):.3f}× | {cost.get('params', float('nan')):.3f}× | {verdict} | {len(arch['expansions'])} | {widths} | {per} | {ms} |")

sens = out / "sensitivity" / "sensitivity.csv"
if sens.is_file():
    rowsens = {}
    for line in sens.read_text().splitlines()[1:]:
        f = line.split(",")
        rowsens[f[0]] = (float(f[1]), float(f[2]))
    print()
    print("| search | Spearman ρ(width ratio, one-on drop) | Spearman ρ(width ratio, one-off gain) | layers |")
    print("|---|---:|---:|---:|")
    for label, name, arch in rows[1:]:
        if arch is None:
            continue
        layers = [l for l in arch["layers"] if l["name"] in rowsens]
        ratio = [l["width"] / l["base"] for l in layers]
        on = [rowsens[l["name"]][0] for l in layers]
        off = [rowsens[l["name"]][1] for l in layers]
        print(f"| {label} | {spearman(ratio, on):+.3f} | {spearman(ratio, off):+.3f} | {len(layers)} |")
