#!/usr/bin/env python3
"""The verdict table of the fair NCE experiment (scripts/experiments/fair-fashion.sh).

    fair-table.py RUN_DIR                        # markdown table + verdict on stdout
    fair-table.py RUN_DIR --scaled-arch PROFILE  # also write RUN_DIR/scaled/arch.toml if NCE
                                                 # landed below 0.97x MACs (the "scaled" arm)
    fair-table.py RUN_DIR --baseline-arch        # write RUN_DIR/scaled/arch.toml: the base
                                                 # widths times the largest factor in budget
    fair-table.py RUN_DIR --svg FILE             # also draw every arm's seeds and mean (SVG)
    fair-table.py RUN_DIR --preset FILE ...      # another budget's preset (default
                                                 # presets/fair-fashion.toml)

Per arm: final test accuracy of every W2A2 seed (last epoch, all 10,000 test images), mean and
sample std, MACs and params relative to the base network (the preset's `model`, default
ResNet-20), CPU-hours. Then the paired difference NCE - baseline by final-training seed (NCE =
mean over search seeds) with a 95 % t-interval, and the pre-registered rule: NCE >= baseline +
0.5 points within the profile's MACs and params budgets, with the interval of the difference
above 0. The baseline is the preset's `baseline`: `uniform` (the base network, at the 1.0x
budget) or `scaled` (every base width times one factor, at a smaller budget).

With a [guided] table in the preset (issue #28) the arms `nce-sens` (sensitivity-guided search)
and `alloc` (`nce allocate`) join, and the methods named in `guided.holm` ("nce" = the NCE
search seeds' mean, "nce-sens", "alloc") are judged together against the baseline with the
Holm-Bonferroni correction (pre-registered in docs/results.md, "Where 2 bits hurt"): paired
two-sided t-test p-values, the k-th smallest (k = 1..m) tested at 0.05 / (m - k + 1) while every
smaller one was rejected; each method's interval is the matching 1 - level one; a method meets
the rule if its mean difference >= +0.5 points, Holm rejects for it (its interval is above 0)
and it is within the budgets. When "nce" is in that family, the NCE-only verdict is not printed.
Every arm's widths are also ranked against the guiding sensitivity (sensitivity-val/, summed
per width slot as `nce allocate` does). Standard library only (Python >= 3.11).
"""
import csv, functools, json, math, re, statistics, subprocess, sys, tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rankstats import spearman  # noqa: E402

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df):
    keys = sorted(k for k in T975 if k <= df)
    return T975[keys[-1]] if keys else float("nan")


def metrics(d):
    m = d / "metrics.jsonl"
    if not m.is_file():
        return []
    return [json.loads(l) for l in m.read_text().splitlines() if l.strip()]


def seconds(d):
    s = sum(e.get("seconds", 0.0) for e in metrics(d))
    log = d / "search.jsonl"
    if log.is_file():
        s += sum(json.loads(l).get("seconds", 0.0) for l in log.read_text().splitlines() if l.strip())
    return s


def model(preset):
    return preset.get("model", "resnet20")


def model_label(preset):
    """The base network's name in the report's prose."""
    return "ResNet-20" if model(preset) == "resnet20" else model(preset)


def base_net(preset):
    """`nce cost` arguments of the base network every arm is measured against."""
    return ["--model", model(preset), "--input", "1x28x28", "--classes", "10"]


def baseline(preset):
    """The arm NCE is compared with: `uniform` (base widths) or `scaled` (one factor, in budget)."""
    return preset.get("baseline", "uniform")


def guided(preset):
    """The preset's [guided] table (issue #28), empty without one."""
    return preset.get("guided", {})


def is_nce_seed(arm):
    """An NCE search with the paper's rule, `nce-s<search seed>` (not `nce-sens`)."""
    return re.fullmatch(r"nce-s\d+", arm) is not None


def nce_seed_arms(out):
    return sorted(p.parent.name for p in out.glob("nce-s*/arch.toml") if is_nce_seed(p.parent.name))


def arms(out, preset):
    base = baseline(preset)
    found = [base]
    found += nce_seed_arms(out)
    found += [n for n in ("tas", "scaled") if n != base and (out / n / "arch.toml").is_file()]
    found += [n for n in guided(preset).get("arms", []) if (out / n / "arch.toml").is_file()]
    return found


def nce_cost(out, preset, args):
    """`nce cost --json` under the preset's profile."""
    return json.loads(_nce_cost(str(out / "bin" / "nce"), preset["profile"], tuple(args)))


@functools.cache
def _nce_cost(nce, profile, args):
    r = subprocess.run([nce, "cost", "--profile", profile, "--json", *args], check=True, capture_output=True, text=True)
    return r.stdout


def slots(out, preset):
    """The base network's width slots (`nce cost --json`): name, base width, the layers it sets."""
    return nce_cost(out, preset, base_net(preset))["slots"]


def base_widths(out, preset):
    return [s["width"] for s in slots(out, preset)]


def cost_ratios(out, preset, arm):
    """MACs and params of the arm's network relative to the base, and whether it is within
    every budget of the preset's profile, from `nce cost --arch`."""
    if arm == "uniform":
        args = base_net(preset)
    else:
        args = ["--arch", str(out / arm / "arch.toml")]
    c = nce_cost(out, preset, args)
    b = {x["metric"]: x["value"] / x["base"] for x in c["budgets"]}
    return b.get("macs", float("nan")), b.get("params", float("nan")), c["pass"]


def accs(out, arm, want_epochs):
    res = {}
    for d in sorted(out.glob(f"w2a2-{arm}-s*")):
        m = metrics(d)
        if len(m) >= want_epochs:
            res[int(d.name.rsplit("-s", 1)[1])] = 100 * m[-1]["test_acc"]
    return res


def mean_std(v):
    if not v:
        return "–"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f} (1 seed)"


def interval(d):
    if len(d) < 2:
        return float("nan"), float("nan"), float("nan")
    m, s = statistics.mean(d), statistics.stdev(d)
    h = t975(len(d) - 1) * s / math.sqrt(len(d))
    return m, m - h, m + h


def diff_text(d):
    """A paired difference with its interval, or what is missing for one."""
    if not d:
        return "no paired seeds finished yet"
    if len(d) == 1:
        return f"{d[0]:+.2f} points (1 seed: no interval yet)"
    m, lo, hi = interval(d)
    return f"{m:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}]"


def paired(a, b):
    """a − b for every final-training seed both have (dicts seed -> accuracy), in seed order."""
    return [a[s] - v for s, v in sorted(b.items()) if s in a]


def fp32_acc(out, arm, want_epochs):
    """The last-epoch test accuracy of an arm's own FP32 training, once it finished."""
    m = metrics(out / f"fp32-{arm}")
    return 100 * m[-1]["test_acc"] if len(m) >= want_epochs else None


def teacher_acc(out):
    """The shared FP32 teacher's test accuracy: its last epoch, or (a teacher copied from a
    committed file has no metrics) `nce eval` once, cached in fp32-uniform/eval.json."""
    d = out / "fp32-uniform"
    m = metrics(d)
    if m:
        return 100 * m[-1]["test_acc"]
    cache, ckpt = d / "eval.json", d / "checkpoint.ot"
    if not cache.is_file():
        if not ckpt.is_file():
            return None
        r = subprocess.run([str(out / "bin" / "nce"), "eval", str(ckpt), "--json"], check=True, capture_output=True, text=True)
        cache.write_text(r.stdout)
    return 100 * json.loads(cache.read_text())["accuracy"]


def report(out, preset):
    q_epochs = preset["w2a2"]["epochs"]
    rows, per_arm = [], {}
    teacher = teacher_acc(out)
    for arm in arms(out, preset):
        a = accs(out, arm, q_epochs)
        per_arm[arm] = a
        macs, params, _ = cost_ratios(out, preset, arm)
        hours = sum(seconds(d) for d in out.glob(f"*{arm}*") if d.is_dir()) / 3600
        seeds = ", ".join(f"{v:.2f}" for _, v in sorted(a.items()))
        fp32 = teacher if arm == "uniform" else fp32_acc(out, arm, preset["fp32"]["epochs"])
        fp32 = "–" if fp32 is None else f"{fp32:.2f}"
        rows.append(f"| {arm} | {mean_std(list(a.values()))} | {seeds or '–'} | {fp32} | {macs:.3f}x | {params:.3f}x | {hours:.2f} |")
    print("| arm | W2A2 test acc. (%) mean ± std | per seed | own FP32 (%) | MACs | params | wall h (2 cores) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if teacher is not None:
        print(f"\nShared FP32 teacher (uniform {model_label(preset)}): {teacher:.2f} % on all test images.")
    nce_arms = [a for a in per_arm if is_nce_seed(a)]
    base = baseline(preset)
    uni = per_arm.get(base, {})
    # NCE per final-training seed: the mean over its search seeds, where every one has that seed.
    seeds = set.intersection(*(set(per_arm[a]) for a in nce_arms)) if nce_arms else set()
    nce_mean = {s: statistics.mean(per_arm[a][s] for a in nce_arms) for s in seeds}
    diffs = paired(nce_mean, uni)
    m, lo, hi = interval(diffs)
    print(f"\nPaired difference NCE − {base} over {len(diffs)} final-training seeds "
          f"(NCE averaged over {len(nce_arms)} search seeds): {diff_text(diffs)}.")
    if len(nce_arms) > 1:  # each search seed on its own, so an interim result stays readable
        for a in nce_arms:
            d = paired(per_arm[a], uni)
            print(f"- {a} − {base} over {len(d)} seeds: {diff_text(d)}.")
    for a in ("tas", "scaled"):
        if a in per_arm and a != base:
            d = paired(nce_mean, per_arm[a])
            print(f"Paired difference NCE − {a} over {len(d)} seeds: {diff_text(d)}.")
            d = paired(per_arm[a], uni)
            print(f"Paired difference {a} − {base} over {len(d)} seeds: {diff_text(d)}.")
    within = all(cost_ratios(out, preset, a)[2] for a in nce_arms)
    need = len(preset["w2a2"]["seeds"])
    budget = Path(preset["profile"]).stem
    family = guided(preset).get("holm", [])
    if "nce" in family:  # NCE is judged with the other methods of its setting, corrected
        holm_report(out, preset, per_arm, nce_mean, nce_arms)
    elif len(diffs) < need or not nce_arms:
        print(f"\nVerdict: not yet decided ({len(diffs)} of {need} paired seeds finished).")
    elif m >= 0.5 and lo > 0 and within:
        print(f"\nVerdict: MET — NCE ≥ {base} + 0.5 points within the budgets of {budget}, interval above 0.")
    else:
        print(f"\nVerdict: NOT MET — difference {m:+.2f} points (needs ≥ +0.50 with the 95 % interval above 0), "
              f"NCE within budget: {within}.")
    if family and "nce" not in family:
        holm_report(out, preset, per_arm, nce_mean, nce_arms)
    return per_arm, teacher


ALPHA = 0.05
METHOD_NAMES = {"nce": "NCE", "nce-sens": "NCE-sensitivity", "alloc": "allocator"}


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d, f = 1e-300, 1.0, 0.0, 1.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def t_p_two_sided(t, df):
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    return 1.0 if t == 0 else betainc(df / 2, 0.5, df / (df + t * t))


def t_critical(level, df):
    """The t with P(|T| >= t) = level: the half-width factor of a (1 − level) interval."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_p_two_sided(mid, df) > level else (lo, mid)
    return (lo + hi) / 2


def paired_t(d):
    """Mean, standard error and the two-sided p-value of a paired difference (>= 2 seeds)."""
    m, se = statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))
    if se == 0:
        return m, se, (1.0 if m == 0 else 0.0)
    return m, se, t_p_two_sided(m / se, len(d) - 1)


def holm(pvalues, alpha=ALPHA):
    """Holm's step-down: the k-th smallest p (k = 0..m−1) is tested at alpha / (m − k), and is
    rejected only if every smaller one was. Returns each test's level and whether it is rejected."""
    m = len(pvalues)
    levels, rejected, going = [0.0] * m, [False] * m, True
    for k, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        levels[i] = alpha / (m - k)
        going = going and pvalues[i] < levels[i]
        rejected[i] = going
    return levels, rejected


def holm_report(out, preset, per_arm, nce_mean, nce_arms):
    """The pre-registered rule of a setting with several methods (docs/results.md, "Where 2 bits
    hurt"): each method − baseline, paired by final-training seed, Holm–Bonferroni over the
    setting's methods, mean ≥ +0.5 points, within the budgets."""
    family, base = guided(preset)["holm"], baseline(preset)
    unknown = [m for m in family if m not in METHOD_NAMES]
    if unknown:
        sys.exit(f"guided.holm: {unknown} are not methods (use {', '.join(METHOD_NAMES)})")
    need, budget = len(preset["w2a2"]["seeds"]), Path(preset["profile"]).stem
    diffs, within = {}, {}
    for method in family:
        accs_of, arms_of = (nce_mean, nce_arms) if method == "nce" else (per_arm.get(method, {}), [method])
        arms_of = [a for a in arms_of if a in per_arm]
        diffs[method] = paired(accs_of, per_arm.get(base, {})) if arms_of else []
        within[method] = bool(arms_of) and all(cost_ratios(out, preset, a)[2] for a in arms_of)
    names = {m: METHOD_NAMES.get(m, m) + (f" ({', '.join(nce_arms)})" if m == "nce" else "") for m in family}
    print(f"\nHolm–Bonferroni over the {len(family)} methods of this setting, each − {base} paired by "
          f"final-training seed (paired t-test, two-sided; the k-th smallest p tested at "
          f"{ALPHA} / ({len(family)} − k + 1) while every smaller one is rejected; the interval is the matching "
          f"1 − level one). A method meets the rule if its mean ≥ +0.50 points, its interval is above 0 "
          f"(Holm rejects) and it is within the budgets of {budget}.")
    done = [m for m in family if len(diffs[m]) >= need]
    if len(done) < len(family):
        for m in family:
            print(f"- {names[m]} − {base} over {len(diffs[m])} seeds: {diff_text(diffs[m])}.")
        print(f"\nVerdict (Holm–Bonferroni, m = {len(family)}): not yet decided "
              f"({len(done)} of {len(family)} methods have all {need} paired seeds).")
        return
    stats = {m: paired_t(diffs[m]) for m in family}
    levels, rejected = holm([stats[m][2] for m in family])
    print(f"\n| method | − {base} (points) | p | Holm level | matching interval | within budget | rule |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for i, m in enumerate(family):
        mean, se, p = stats[m]
        h = t_critical(levels[i], len(diffs[m]) - 1) * se
        met = rejected[i] and mean - h > 0 and mean >= 0.5 and within[m]
        verdicts.append(f"{names[m]} {'MET' if met else 'NOT MET'}")
        p_text = "< 0.0001" if p < 1e-4 else f"{p:.4f}"
        print(f"| {names[m]} | {mean:+.2f} | {p_text} | {levels[i]:.4f} | {100 * (1 - levels[i]):.2f} % CI "
              f"[{mean - h:+.2f}, {mean + h:+.2f}] | {'yes' if within[m] else 'no'} | {'MET' if met else 'NOT MET'} |")
    print(f"\nVerdict (Holm–Bonferroni, m = {len(family)}): {'; '.join(verdicts)}.")


def svg(per_arm, teacher, path):
    """A dot plot: each final-training seed of each arm, its mean as a bar, the teacher as a line."""
    vals = [v for a in per_arm.values() for v in a.values()] + ([teacher] if teacher else [])
    if not vals:
        return
    lo, hi = math.floor(min(vals) * 5 - 1) / 5, math.ceil(max(vals) * 5 + 1) / 5
    w, h, left, top, bottom = max(560, 120 + 130 * len(per_arm)), 320, 70, 40, 50
    y = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">W2A2 test accuracy by final-training '
         f'seed (all 10,000 test images)</text>']
    steps = round((hi - lo) / 0.2)
    for i in range(steps + 1):
        v = lo + i * 0.2
        o.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f} %</text>')
    if teacher:
        o.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(teacher):.1f}" y2="{y(teacher):.1f}" '
                 f'stroke="#888" stroke-dasharray="6 4"/>')
        o.append(f'<text x="{w - 22}" y="{y(teacher) - 5:.1f}" text-anchor="end" fill="#555">'
                 f'FP32 teacher {teacher:.2f} %</text>')
    for i, (arm, a) in enumerate(per_arm.items()):
        cx = left + 65 + 130 * i
        o.append(f'<text x="{cx}" y="{h - bottom + 20}" text-anchor="middle">{arm}</text>')
        for seed, v in sorted(a.items()):
            o.append(f'<circle cx="{cx - 20 + 20 * (seed % 3)}" cy="{y(v):.1f}" r="4" fill="#1f77b4">'
                     f'<title>seed {seed}: {v:.2f} %</title></circle>')
        if a:
            m = statistics.mean(a.values())
            o.append(f'<line x1="{cx - 32}" x2="{cx + 32}" y1="{y(m):.1f}" y2="{y(m):.1f}" stroke="#d62728" stroke-width="2"/>')
            o.append(f'<text x="{cx + 36}" y="{y(m) + 4:.1f}" fill="#d62728">{m:.2f}</text>')
    o.append(f'<text x="{left}" y="{h - 8}" fill="#555">dots: seeds 0, 1, 2 left to right; red: mean '
             f'(scripts/experiments/fair-table.py)</text>')
    o.append("</svg>")
    Path(path).write_text("\n".join(o) + "\n")


def widths_svg(out, preset, path):
    """Each searched arm's width per layer as a ratio to the base width: one line per arm."""
    archs = {p.parent.name: tomllib.loads(p.read_text()) for p in sorted(out.glob("*/arch.toml"))}
    if not archs:
        return
    names = [s["layer"] for s in slots(out, preset)]
    ratios = {arm: [w / b for w, b in zip(a["widths"], a["base_widths"])] for arm, a in archs.items()}
    hi = max(2.0, max(max(r) for r in ratios.values()))
    w, h, left, top, bottom, right = 80 + 38 * len(names), 380, 60, 40, 110, 120
    x = lambda i: left + 19 + 38 * i  # noqa: E731
    y = lambda v: top + (hi - v) / hi * (h - top - bottom)  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + right}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w + right}" height="{h}" fill="white"/>',
         f'<text x="{(w + right) / 2}" y="20" text-anchor="middle" font-size="14">Searched width / base width, '
         f'per layer (1.0 = uniform {model_label(preset)})</text>']
    for i in range(int(hi / 0.25) + 1):
        v = 0.25 * i
        o.append(f'<line x1="{left}" x2="{w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="{"#888" if v == 1 else "#e5e5e5"}"/>')
        o.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i, n in enumerate(names):
        o.append(f'<text transform="translate({x(i) + 4},{h - bottom + 8}) rotate(60)" font-size="11">{n}</text>')
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for k, (arm, r) in enumerate(ratios.items()):
        c = colors[k % len(colors)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(r))
        o.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for i, v in enumerate(r):
            o.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{c}"><title>{arm} {names[i]}: '
                     f'{archs[arm]["widths"][i]} of {archs[arm]["base_widths"][i]}</title></circle>')
        o.append(f'<line x1="{w + 10}" x2="{w + 30}" y1="{top + 20 * k}" y2="{top + 20 * k}" stroke="{c}" stroke-width="2"/>')
        o.append(f'<text x="{w + 36}" y="{top + 20 * k + 4}">{arm}</text>')
    o.append("</svg>")
    Path(path).write_text("\n".join(o) + "\n")


def scale(f, base):
    """Every width times f, rounded, at least 1."""
    return [max(1, round(b * f)) for b in base]


def largest_factor(ok, lo, hi=1.0):
    """The largest factor in [lo, hi] (to 1e-4) for which ok(factor) holds; ok(lo) is assumed."""
    if ok(hi):
        return hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def scaled_cost(out, preset, f):
    """`nce cost --json` of the base network with every width times f."""
    return nce_cost(out, preset, [*base_net(preset), "--widths", ",".join(map(str, scale(f, base_widths(out, preset))))])


def baseline_arch(out, preset):
    """Writes scaled/arch.toml for a `scaled` baseline: the base widths times the largest single
    factor (to 1e-4, widths rounded, at least 1) whose network is within every budget."""
    if (out / "scaled" / "arch.toml").is_file():
        return

    f = largest_factor(lambda f: scaled_cost(out, preset, f)["pass"], lo=0.05)
    ratios = {x["metric"]: x["value"] / x["base"] for x in scaled_cost(out, preset, f)["budgets"]}
    base = base_widths(out, preset)
    write_arch(out / "scaled", preset, scale(f, base), base,
               f"uniform scale {f:.4f}, the largest within the budgets "
               f"({', '.join(f'{k} {v:.4f}x' for k, v in ratios.items())})")
    print(f"scaled baseline: factor {f:.4f}, {ratios}", file=sys.stderr)


def write_arch(d, preset, widths, base, derivation):
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'model = "{model(preset)}"', 'input = "1x28x28"', "classes = 10", f'profile = "{preset["profile"]}"',
             f"widths = {widths}", f"base_widths = {base}", f'derivation = "{derivation}"',
             "repaired = []", "layers = []", "costs = []", "budgets = []", "expansions = []"]
    (d / "arch.toml.new").write_text("\n".join(lines) + "\n")
    (d / "arch.toml.new").replace(d / "arch.toml")


def scaled_arch(out, preset, profile):
    """Writes scaled/arch.toml: base widths times one factor, at the mean MACs of the NCE arms."""
    preset = {**preset, "profile": profile}
    nce = [cost_ratios(out, preset, a)[0] for a in nce_seed_arms(out)]
    if not nce or min(nce) >= 0.97 or (out / "scaled" / "arch.toml").is_file():
        return
    target = statistics.mean(nce)

    def macs(f):
        return next(x["total"] for x in scaled_cost(out, preset, f)["metrics"] if x["metric"] == "macs")

    base_macs = macs(1.0)
    f = largest_factor(lambda f: macs(f) / base_macs <= target, lo=0.3)
    write_arch(out / "scaled", preset, scale(f, base_widths(out, preset)), base_widths(out, preset),
               f"uniform scale {f:.4f} to NCE's mean MACs ({target:.4f}x)")
    print(f"scaled arm: factor {f:.4f}, MACs {macs(f) / base_macs:.4f}x (NCE mean {target:.4f}x)", file=sys.stderr)


def spearman_ci(a, b):
    """Spearman rho with a 95 % Fisher-z interval (se = 1.06 / sqrt(n - 3), Fieller et al.)."""
    rho = spearman(a, b)
    if math.isnan(rho) or len(a) < 4:
        return float("nan"), float("nan"), float("nan")
    rho = max(min(rho, 0.999999), -0.999999)
    z, se = math.atanh(rho), 1.06 / math.sqrt(len(a) - 3)
    return rho, math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def sensitivity(out):
    csv_path = out / "sensitivity" / "sensitivity.csv"
    if not csv_path.is_file():
        print("\nWidth vs sensitivity: not yet measured (needs the uniform W2A2 seed-0 model).")
        return
    with open(csv_path, newline="") as f:
        gain = {r["layer"]: float(r["one_off_gain"]) for r in csv.DictReader(f)}
    print("\nWidth vs calibrated sensitivity (one-off gain of the trained uniform W2A2 model, "
          "`nce sensitivity` on all test images): Spearman rho with a 95 % Fisher-z interval")
    for p in sorted(out.glob("*/arch.toml")):
        arch = tomllib.loads(p.read_text())
        pairs = [(w / l["base"], gain[l["name"]]) for l, w in zip(arch["layers"], arch["widths"]) if l["name"] in gain]
        if len(pairs) < 4:
            continue
        rho, lo, hi = spearman_ci([x for x, _ in pairs], [y for _, y in pairs])
        print(f"- {p.parent.name}: rho = {rho:+.3f} [{lo:+.3f}, {hi:+.3f}] over {len(pairs)} layers")


def slot_scores(out, preset, table, measure):
    """One score per width slot, as `nce allocate` and `--expansion sensitivity` compute it
    (src/sensitivity/slots.rs): the sum over the layers the slot sets, negative and NaN values
    counting as 0; None where none of its layers was measured."""
    column = measure.replace("-", "_")
    with open(table, newline="") as f:
        values = {r["layer"]: float(r[column]) for r in csv.DictReader(f)}
    scores = []
    for s in slots(out, preset):
        measured = [values[name] for name in s["layers"] if name in values]
        scores.append(sum(v if math.isfinite(v) and v > 0 else 0.0 for v in measured) if measured else None)
    return scores


def guided_sensitivity(out, preset):
    """Width vs the sensitivity that guided nce-sens and alloc, for every arm with widths."""
    table, g = out / "sensitivity-val" / "sensitivity.csv", guided(preset)
    if not g:
        return
    if not table.is_file() or not g.get("measure"):
        print("\nWidth vs the guiding sensitivity: not yet measured (stage `guided`, once guided.measure is set).")
        return
    scores = slot_scores(out, preset, table, g["measure"])
    print(f"\nWidth vs the guiding sensitivity ({g['measure']} of search-init, `nce sensitivity --val-images "
          f"{g.get('val_images', 10000)}` on training images it never saw, summed per width slot): Spearman rho "
          f"with a 95 % Fisher-z interval")
    for p in sorted(out.glob("*/arch.toml")):
        arch = tomllib.loads(p.read_text())
        pairs = [(w / b, sc) for w, b, sc in zip(arch["widths"], arch["base_widths"], scores) if sc is not None]
        if len(pairs) < 4:
            continue
        rho, lo, hi = spearman_ci([x for x, _ in pairs], [y for _, y in pairs])
        print(f"- {p.parent.name}: rho = {rho:+.3f} [{lo:+.3f}, {hi:+.3f}] over {len(pairs)} slots")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fair-fashion")
    preset_file = sys.argv[sys.argv.index("--preset") + 1] if "--preset" in sys.argv else "presets/fair-fashion.toml"
    preset = tomllib.loads(Path(preset_file).read_text())
    if "--scaled-arch" in sys.argv:
        scaled_arch(out, preset, sys.argv[sys.argv.index("--scaled-arch") + 1])
        return
    if "--baseline-arch" in sys.argv:
        if baseline(preset) == "scaled":
            baseline_arch(out, preset)
        return
    per_arm, teacher = report(out, preset)
    sensitivity(out)
    guided_sensitivity(out, preset)
    if "--svg" in sys.argv:
        svg(per_arm, teacher, sys.argv[sys.argv.index("--svg") + 1])
    if "--widths-svg" in sys.argv:
        widths_svg(out, preset, sys.argv[sys.argv.index("--widths-svg") + 1])


if __name__ == "__main__":
    main()
