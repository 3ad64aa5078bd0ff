"""The verdicts on claims (a), (b), (c), computed from the numbers of results.json, and their sentences.

    (a) at equal training compute ELIT-SiT trained at full budget (single budget, the paper's row 2) beats SiT
        (row 1); read from the learning curves at equal training FLOPs. Also: the multibudget model (row 3)
        against SiT at the multibudget model's training FLOPs (SiT's curve interpolated there);
    (b) one multibudget model trades quality for FLOPs smoothly across budgets;
    (c) cheap CFG (null-label pass at a low budget) matches CFG at about a third less compute per guided step,
        on the multibudget model; the same test on the single-budget model asks whether it needs multibudget
        training.
Thresholds are fixed before the run and stated in the report; nothing is judged on unrecognisable samples.
"""

from __future__ import annotations

from typing import Optional

from studies.fmnist.rows import fmt, fraction

A_MARGIN = 0.05                # (a) FD gap needed at equal FLOPs: max(A_MARGIN x FD(SiT), A_NOISE x floor spread)
A_NOISE = 2.0
B_FD_TOL = 0.10                # (b) monotone: halving the budget never lowers FD by more than B_FD_TOL (relative)
B_ACC_TOL = 0.02               #     ... nor raises accuracy by more than B_ACC_TOL (absolute)
B_MAX_RATIO = 2.0              #     graceful: no halving of the budget multiplies FD by more than B_MAX_RATIO
C_FD_TOL = 0.10                # (c) FD(cheap CFG) <= (1 + C_FD_TOL) FD(CFG)
C_ACC_TOL = 0.02               #     accuracy(cheap CFG) >= accuracy(CFG) - C_ACC_TOL
C_MIN_SAVING = 0.25            #     and >= 25% fewer GFLOPs per guided step ("about a third")
MIN_SAMPLE_ACCURACY = 0.5      # nothing is judged unless the final full-budget samples of every model are
                               # recognisable: the classifier gives the drawn label for half of them (chance 0.1)
THRESHOLDS = dict(a_margin=A_MARGIN, a_noise=A_NOISE, b_fd_tol=B_FD_TOL, b_acc_tol=B_ACC_TOL,
                  b_max_ratio=B_MAX_RATIO, c_fd_tol=C_FD_TOL, c_acc_tol=C_ACC_TOL, c_min_saving=C_MIN_SAVING,
                  min_sample_accuracy=MIN_SAMPLE_ACCURACY)
NAMES = {"a": "(a) at equal training compute ELIT-SiT (single budget) beats SiT",
         "a_multi": "(a') the multibudget ELIT-SiT at equal training compute vs SiT",
         "b": "(b) one multibudget model trades quality for FLOPs smoothly",
         "c": "(c) cheap CFG matches CFG at about a third less compute per guided step (multibudget model)",
         "c_single": "(c') the same on the single-budget model (does cheap CFG need multibudget training?)"}


def _row(results: dict, key: str) -> dict:
    return next((r for r in results.get("rows", []) if r["key"] == key), {})


def at_flops(curve: list[dict], flops: float, key: str = "fd") -> Optional[float]:
    """`key` of a learning curve linearly interpolated at `flops` training GFLOPs (None outside the curve)."""
    pts = sorted((p["training_gflops"], p[key]) for p in curve if p.get(key) is not None)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= flops <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (flops - x0) / (x1 - x0)
    if pts and abs(pts[-1][0] - flops) <= 1e-9 * max(flops, 1.0):
        return pts[-1][1]
    return None


def floor_spread(results: dict) -> float:
    floor = results.get("reference", {}).get("floor", {})
    return max([f.get("spread") or 0.0 for f in floor.values()] or [0.0])


def compare_at_equal_flops(results: dict, model: str, base: str = "sit") -> dict:
    """Model vs base at the largest training FLOPs both curves reach; point-by-point on model's curve too."""
    curves = results.get("curves", {})
    cm, cb = curves.get(model, []), curves.get(base, [])
    out = dict(model=model, base=base, floor_spread=floor_spread(results))
    if len(cm) < 2 or len(cb) < 2:
        return dict(out, verdict="not evaluated")
    # One sample size along the curves: every point's FD at the curve size (the last point's from the first
    # images of its full-size sample, the same seeds) when all points have it.
    small = all(p.get("fd_small") is not None for p in cm + cb)
    fd, acc = ("fd_small", "accuracy_small") if small else ("fd", "accuracy")
    f_eq = min(max(p["training_gflops"] for p in cm), max(p["training_gflops"] for p in cb))
    out.update(flops=f_eq, fd_model=at_flops(cm, f_eq, fd), fd_base=at_flops(cb, f_eq, fd), fd_key=fd,
               accuracy_model=at_flops(cm, f_eq, acc), accuracy_base=at_flops(cb, f_eq, acc),
               heldout_model=at_flops(cm, f_eq, "heldout_loss"), heldout_base=at_flops(cb, f_eq, "heldout_loss"),
               final_flops_model=cm[-1]["training_gflops"], final_flops_base=cb[-1]["training_gflops"],
               steps=cm[-1]["step"])
    pairs = [(p[fd], at_flops(cb, p["training_gflops"], fd)) for p in cm if p.get(fd) is not None]
    pairs = [(m, b) for m, b in pairs if b is not None]
    out["points_compared"], out["points_model_better"] = len(pairs), sum(m < b for m, b in pairs)
    if out["fd_model"] is None or out["fd_base"] is None:
        return dict(out, verdict="not evaluated")
    margin = max(A_MARGIN * out["fd_base"], A_NOISE * out["floor_spread"])
    out.update(margin=margin, fd_ratio=out["fd_model"] / out["fd_base"])
    if out["fd_model"] <= out["fd_base"] - margin and 2 * out["points_model_better"] >= len(pairs):
        out["verdict"] = "holds"
    elif out["fd_model"] >= out["fd_base"] + margin:
        out["verdict"] = "does not hold"
    else:
        out["verdict"] = "inconclusive"
    return out


def judge_b(results: dict) -> dict:
    rows = [r for r in results.get("rows", []) if r["model"] == "elit_multi" and r["guidance"] is None
            and r.get("gflops")]
    curve = sorted(rows, key=lambda r: -r["gflops"])
    sit = _row(results, "sit")
    b = dict(budgets=[r["budget"] for r in curve], gflops=[r["gflops"] for r in curve],
             fd=[r.get("fd") for r in curve], accuracy=[r.get("accuracy") for r in curve],
             heldout=[r.get("heldout_loss") for r in curve])
    if len(curve) < 2 or any(v is None for v in b["fd"] + b["accuracy"]):
        return dict(b, verdict="not evaluated")
    steps = list(zip(curve, curve[1:]))
    b["fd_ratios"] = [lo["fd"] / hi["fd"] for hi, lo in steps]
    b["monotone"] = all(lo["fd"] >= hi["fd"] * (1 - B_FD_TOL) and lo["accuracy"] <= hi["accuracy"] + B_ACC_TOL
                        for hi, lo in steps)
    b["graceful"] = max(b["fd_ratios"]) <= B_MAX_RATIO
    b["verdict"] = "holds" if b["monotone"] and b["graceful"] else "does not hold"
    if sit.get("fd") is not None and sit.get("gflops"):
        better = [r for r in curve if r["fd"] <= sit["fd"]]
        cheapest = min(better, key=lambda r: r["gflops"]) if better else None
        b["cheapest_budget_matching_sit_fd"] = cheapest["budget"] if cheapest else None
        b["its_gflops_relative_to_sit"] = cheapest["gflops"] / sit["gflops"] if cheapest else None
    return b


def judge_c(results: dict, prefix: str) -> dict:
    cfg, cheap = _row(results, f"{prefix}_cfg"), _row(results, f"{prefix}_cheap_cfg")
    auto, full = _row(results, f"{prefix}_autoguidance"), _row(results, f"{prefix}_b1")
    c = dict(fd_cfg=cfg.get("fd"), fd_cheap=cheap.get("fd"), fd_autoguidance=auto.get("fd"),
             accuracy_cfg=cfg.get("accuracy"), accuracy_cheap=cheap.get("accuracy"),
             accuracy_autoguidance=auto.get("accuracy"), gflops_cfg=cfg.get("gflops"),
             gflops_cheap=cheap.get("gflops"), latency_cfg=cfg.get("latency_ms_per_image"),
             latency_cheap=cheap.get("latency_ms_per_image"), fd_unguided=full.get("fd"))
    if None in (c["fd_cfg"], c["fd_cheap"], c["accuracy_cfg"], c["accuracy_cheap"], c["gflops_cfg"], c["gflops_cheap"]):
        return dict(c, verdict="not evaluated")
    c["fd_ratio"] = c["fd_cheap"] / c["fd_cfg"]
    c["gflops_saving"] = 1 - c["gflops_cheap"] / c["gflops_cfg"]
    if c["latency_cfg"] and c["latency_cheap"]:
        c["latency_saving"] = 1 - c["latency_cheap"] / c["latency_cfg"]
    c["quality_matches"] = c["fd_ratio"] <= 1 + C_FD_TOL and c["accuracy_cheap"] >= c["accuracy_cfg"] - C_ACC_TOL
    c["saving_enough"] = c["gflops_saving"] >= C_MIN_SAVING
    c["verdict"] = "holds" if c["quality_matches"] and c["saving_enough"] else "does not hold"
    return c


def judge_claims(results: dict) -> dict:
    """Verdicts ('holds', 'does not hold', 'inconclusive', 'not evaluated') with the numbers behind them."""
    claims = dict(a=compare_at_equal_flops(results, "elit_single"),
                  a_multi=compare_at_equal_flops(results, "elit_multi"), b=judge_b(results),
                  c=judge_c(results, "multi"), c_single=judge_c(results, "single"))
    fulls = [_row(results, k).get("accuracy") for k in ("sit", "single_b1", "multi_b1")]
    known = [v for v in fulls if v is not None]
    if known and min(known) < MIN_SAMPLE_ACCURACY:
        for claim in claims.values():
            if claim["verdict"] != "not evaluated":
                claim["verdict_from_numbers"] = claim["verdict"]
                claim["verdict"] = "not evaluated"
                claim["reason"] = (f"samples not recognisable: classifier accuracy on the final full-budget samples "
                                   f"{' / '.join(fmt(v) for v in fulls)} (SiT / single / multibudget), below "
                                   f"{MIN_SAMPLE_ACCURACY} (chance 0.1)")
    return claims


def threshold_text(key: str) -> str:
    if key in ("a", "a_multi"):
        return (f"at the largest training FLOPs both curves reach (linear interpolation between curve points), "
                f"holds if FD(ELIT) <= FD(SiT) - m and ELIT is lower at at least half of its curve points, does not "
                f"hold if FD(ELIT) >= FD(SiT) + m, inconclusive in between; m = max({A_MARGIN:g} x FD(SiT), "
                f"{A_NOISE:g} x the real-image FD spread between two disjoint subsets)")
    if key == "b":
        return (f"along budgets of falling GFLOPs, FD never falls by more than {B_FD_TOL:.0%} and accuracy never "
                f"rises by more than {B_ACC_TOL * 100:g} points (monotone), and no step multiplies FD by more than "
                f"{B_MAX_RATIO:g} (graceful)")
    return (f"FD(cheap CFG) <= {1 + C_FD_TOL:g} x FD(CFG), accuracy(cheap CFG) >= accuracy(CFG) - "
            f"{C_ACC_TOL * 100:g} points, and >= {C_MIN_SAVING:.0%} fewer GFLOPs per guided step")


def claim_sentence(key: str, c: dict) -> str:
    """The numbers behind a verdict, in one sentence."""
    if c.get("reason"):
        return f"Not judged: {c['reason']}; the numbers alone would say '{c['verdict_from_numbers']}'."
    if c.get("verdict") in (None, "not evaluated"):
        return "Some numbers are missing (see Errors)."
    if key in ("a", "a_multi"):
        return (f"At {c['flops'] / 1e6:.2f} PFLOPs of training: FD {c['fd_model']:.3f} (ELIT) vs {c['fd_base']:.3f} "
                f"(SiT), ratio {c['fd_ratio']:.3f}, margin {c['margin']:.3f}; accuracy {fmt(c['accuracy_model'], '.4f')} "
                f"vs {fmt(c['accuracy_base'], '.4f')}; held-out loss {fmt(c['heldout_model'], '.4f')} vs "
                f"{fmt(c['heldout_base'], '.4f')}. ELIT lower at {c['points_model_better']} of "
                f"{c['points_compared']} curve points. Same {c['steps']} steps: ELIT {c['final_flops_model'] / 1e6:.2f} "
                f"vs SiT {c['final_flops_base'] / 1e6:.2f} PFLOPs in total.")
    if key == "b":
        pts = ", ".join(f"b={fraction(b)}: {g:.2f} GFLOPs FD {f:.3f} acc {a:.3f}"
                        for b, g, f, a in zip(c["budgets"], c["gflops"], c["fd"], c["accuracy"]))
        extra = ""
        if "cheapest_budget_matching_sit_fd" in c:
            m = c["cheapest_budget_matching_sit_fd"]
            extra = (f" The cheapest budget at or below SiT's FD: b={fraction(m)} ({c['its_gflops_relative_to_sit']:.2f}x "
                     "SiT's GFLOPs)." if m is not None else " No budget reaches SiT's FD.")
        return (f"{pts}; monotone: {c['monotone']}, largest FD ratio per halving {max(c['fd_ratios']):.2f} "
                f"(graceful: {c['graceful']}).{extra}")
    auto = (f" Autoguidance: FD {fmt(c['fd_autoguidance'])}, accuracy {fmt(c['accuracy_autoguidance'], '.4f')}."
            if c.get("fd_autoguidance") is not None else "")
    return (f"FD {c['fd_cheap']:.3f} (cheap) vs {c['fd_cfg']:.3f} (CFG), ratio {c['fd_ratio']:.3f}; accuracy "
            f"{c['accuracy_cheap']:.4f} vs {c['accuracy_cfg']:.4f}; {c['gflops_saving']:.0%} fewer GFLOPs per guided "
            f"step" + (f", {c['latency_saving']:.0%} less latency" if c.get("latency_saving") is not None else "")
            + f".{auto} Unguided b=1: FD {fmt(c['fd_unguided'])}.")
