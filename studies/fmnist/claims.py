"""The verdicts on claims (a), (b), (c), computed from the numbers of results.json, and their sentences.

    (a) at equal training compute ELIT-SiT (full budget) beats SiT;
    (b) one multibudget model trades quality for FLOPs smoothly across budgets;
    (c) cheap CFG (null-label pass at a low budget) matches CFG at about a third less compute per guided step.
The thresholds are fixed before the run and stated in the report; no claim is judged on unrecognisable samples.
"""

from __future__ import annotations

from studies.fmnist.rows import fmt, fraction

# Claim thresholds (stated in the report).
A_MARGIN = 0.05                # (a) holds if FD(ELIT, 1) <= (1 - A_MARGIN) FD(SiT) at <= SiT's training FLOPs;
                               #     fails if FD(ELIT, 1) >= (1 + A_MARGIN) FD(SiT); inconclusive in between
B_FD_TOL = 0.10                # (b) monotone: halving the budget never lowers FD by more than B_FD_TOL (relative)
B_ACC_TOL = 0.02               #     ... nor raises accuracy by more than B_ACC_TOL (absolute)
B_MAX_RATIO = 2.0              #     graceful: no halving of the budget multiplies FD by more than B_MAX_RATIO
C_FD_TOL = 0.10                # (c) FD(cheap CFG) <= (1 + C_FD_TOL) FD(CFG)
C_ACC_TOL = 0.02               #     accuracy(cheap CFG) >= accuracy(CFG) - C_ACC_TOL
C_MIN_SAVING = 0.25            #     and >= 25% fewer GFLOPs per guided step ("about a third")
MIN_SAMPLE_ACCURACY = 0.5      # no claim is judged unless SiT's and full-budget ELIT's samples are recognisable:
                               # the classifier must give the drawn label for at least half of them (chance: 0.1)
THRESHOLDS = dict(a_margin=A_MARGIN, b_fd_tol=B_FD_TOL, b_acc_tol=B_ACC_TOL, b_max_ratio=B_MAX_RATIO,
                  c_fd_tol=C_FD_TOL, c_acc_tol=C_ACC_TOL, c_min_saving=C_MIN_SAVING)


def _row(results: dict, key: str) -> dict:
    return next((r for r in results["rows"] if r["key"] == key), {})


def judge_claims(results: dict) -> dict:
    """Verdicts ('holds', 'does not hold', 'inconclusive', 'not evaluated') with the numbers behind them."""
    rows = results["rows"]
    sit, full = _row(results, "sit"), _row(results, "elit_b1")
    training = results.get("training", {})
    claims = {}

    # (a) equal training compute: ELIT at full budget vs SiT.
    t_sit, t_elit = (training.get(n, {}).get("training_gflops") for n in ("sit", "elit"))
    a = dict(fd_sit=sit.get("fd"), fd_elit=full.get("fd"), accuracy_sit=sit.get("accuracy"),
             accuracy_elit=full.get("accuracy"), heldout_sit=sit.get("heldout_loss"),
             heldout_elit=full.get("heldout_loss"), training_gflops_sit=t_sit, training_gflops_elit=t_elit,
             steps_sit=training.get("sit", {}).get("steps"), steps_elit=training.get("elit", {}).get("steps"),
             threshold=f"holds if FD(ELIT, b=1) <= {1 - A_MARGIN:g} x FD(SiT) with ELIT's training FLOPs <= SiT's; "
                       f"does not hold if FD(ELIT, b=1) >= {1 + A_MARGIN:g} x FD(SiT) or ELIT used more FLOPs; "
                       "inconclusive in between")
    if None in (a["fd_sit"], a["fd_elit"], t_sit, t_elit):
        a["verdict"] = "not evaluated"
    else:
        ratio = a["fd_elit"] / a["fd_sit"]
        a["fd_ratio"], a["compute_ratio"] = ratio, t_elit / t_sit
        if t_elit > t_sit * (1 + 1e-9):
            a["verdict"] = "does not hold"
        elif ratio <= 1 - A_MARGIN:
            a["verdict"] = "holds"
        elif ratio >= 1 + A_MARGIN:
            a["verdict"] = "does not hold"
        else:
            a["verdict"] = "inconclusive"
    claims["a"] = a

    # (b) smooth quality-for-FLOPs trade-off across budgets.
    curve = sorted([r for r in rows if r["model"] == "elit" and r["guidance"] is None and r.get("gflops")],
                   key=lambda r: -r["gflops"])
    b = dict(budgets=[r["budget"] for r in curve], gflops=[r["gflops"] for r in curve],
             fd=[r.get("fd") for r in curve], accuracy=[r.get("accuracy") for r in curve],
             heldout=[r.get("heldout_loss") for r in curve],
             threshold=f"holds if, along budgets of falling GFLOPs, FD never falls by more than {B_FD_TOL:.0%} and "
                       f"accuracy never rises by more than {B_ACC_TOL * 100:g} points (monotone), and no step "
                       f"multiplies FD by more than {B_MAX_RATIO:g} (graceful)")
    if len(curve) < 2 or any(v is None for v in b["fd"] + b["accuracy"]):
        b["verdict"] = "not evaluated"
    else:
        steps = list(zip(curve, curve[1:]))
        b["fd_ratios"] = [lo["fd"] / hi["fd"] for hi, lo in steps]
        b["monotone"] = all(lo["fd"] >= hi["fd"] * (1 - B_FD_TOL) and lo["accuracy"] <= hi["accuracy"] + B_ACC_TOL
                            for hi, lo in steps)
        b["graceful"] = max(b["fd_ratios"]) <= B_MAX_RATIO
        b["verdict"] = "holds" if b["monotone"] and b["graceful"] else "does not hold"
        if sit.get("fd") is not None and sit.get("gflops"):
            better = [r for r in curve if r["fd"] <= sit["fd"]]
            b["cheapest_budget_matching_sit_fd"] = min(better, key=lambda r: r["gflops"])["budget"] if better else None
            b["its_gflops_relative_to_sit"] = (min(r["gflops"] for r in better) / sit["gflops"]) if better else None
    claims["b"] = b

    # (c) cheap CFG vs CFG.
    cfg, cheap, auto = _row(results, "cfg"), _row(results, "cheap_cfg"), _row(results, "autoguidance")
    c = dict(fd_cfg=cfg.get("fd"), fd_cheap=cheap.get("fd"), fd_autoguidance=auto.get("fd"),
             accuracy_cfg=cfg.get("accuracy"), accuracy_cheap=cheap.get("accuracy"),
             accuracy_autoguidance=auto.get("accuracy"), gflops_cfg=cfg.get("gflops"),
             gflops_cheap=cheap.get("gflops"), latency_cfg=cfg.get("latency_ms_per_image"),
             latency_cheap=cheap.get("latency_ms_per_image"), fd_unguided=full.get("fd"),
             threshold=f"holds if FD(cheap CFG) <= {1 + C_FD_TOL:g} x FD(CFG), accuracy(cheap CFG) >= accuracy(CFG) - "
                       f"{C_ACC_TOL * 100:g} points, and cheap CFG needs >= {C_MIN_SAVING:.0%} fewer GFLOPs per "
                       "guided step")
    if None in (c["fd_cfg"], c["fd_cheap"], c["accuracy_cfg"], c["accuracy_cheap"], c["gflops_cfg"], c["gflops_cheap"]):
        c["verdict"] = "not evaluated"
    else:
        c["fd_ratio"] = c["fd_cheap"] / c["fd_cfg"]
        c["gflops_saving"] = 1 - c["gflops_cheap"] / c["gflops_cfg"]
        if c["latency_cfg"] and c["latency_cheap"]:
            c["latency_saving"] = 1 - c["latency_cheap"] / c["latency_cfg"]
        c["quality_matches"] = c["fd_ratio"] <= 1 + C_FD_TOL and c["accuracy_cheap"] >= c["accuracy_cfg"] - C_ACC_TOL
        c["saving_enough"] = c["gflops_saving"] >= C_MIN_SAVING
        c["verdict"] = "holds" if c["quality_matches"] and c["saving_enough"] else "does not hold"
    claims["c"] = c

    # A comparison of models whose samples are unrecognisable says nothing about the method.
    accuracies = [r.get("accuracy") for r in (sit, full)]
    if all(v is not None for v in accuracies) and min(accuracies) < MIN_SAMPLE_ACCURACY:
        for claim in claims.values():
            if claim["verdict"] != "not evaluated":
                claim["verdict_from_numbers"] = claim["verdict"]
                claim["verdict"] = "not evaluated"
                claim["reason"] = (f"samples not recognisable: classifier accuracy on SiT's / full-budget ELIT's samples "
                                   f"{accuracies[0]:.3f} / {accuracies[1]:.3f} < {MIN_SAMPLE_ACCURACY} (chance 0.1)")
    return claims


def claim_sentence(key: str, c: dict) -> str:
    """The numbers behind a verdict, in one sentence."""
    if c.get("reason"):
        return f"Not judged: {c['reason']}; the numbers alone would say '{c['verdict_from_numbers']}'."
    if c.get("verdict") in (None, "not evaluated"):
        return "Some numbers are missing (see Errors)."
    if key == "a":
        return (f"FD {c['fd_elit']:.3f} (ELIT, b=1) vs {c['fd_sit']:.3f} (SiT), ratio {c['fd_ratio']:.3f}; accuracy "
                f"{fmt(c['accuracy_elit'], '.4f')} vs {fmt(c['accuracy_sit'], '.4f')}; held-out loss "
                f"{fmt(c['heldout_elit'], '.4f')} vs {fmt(c['heldout_sit'], '.4f')}; same {c['steps_elit']} steps, "
                f"ELIT used {c['compute_ratio']:.2f}x SiT's training FLOPs.")
    if key == "b":
        pts = ", ".join(f"b={fraction(b)}: {g:.2f} GFLOPs FD {f:.3f} acc {a:.3f}"
                        for b, g, f, a in zip(c["budgets"], c["gflops"], c["fd"], c["accuracy"]))
        extra = ""
        if "cheapest_budget_matching_sit_fd" in c:
            m = c["cheapest_budget_matching_sit_fd"]
            extra = (f" The cheapest budget at or below SiT's FD: b={fraction(m)} ({c['its_gflops_relative_to_sit']:.2f}x "
                     "SiT's GFLOPs)." if m is not None else " No budget reaches SiT's FD.")
        return (f"{pts}; monotone: {c['monotone']}, largest FD ratio per step {max(c['fd_ratios']):.2f} "
                f"(graceful: {c['graceful']}).{extra}")
    return (f"FD {c['fd_cheap']:.3f} (cheap) vs {c['fd_cfg']:.3f} (CFG), ratio {c['fd_ratio']:.3f}; accuracy "
            f"{c['accuracy_cheap']:.4f} vs {c['accuracy_cfg']:.4f}; {c['gflops_saving']:.0%} fewer GFLOPs per guided "
            f"step" + (f", {c['latency_saving']:.0%} less latency" if c.get("latency_saving") is not None else "")
            + f". Autoguidance: FD {fmt(c['fd_autoguidance'])}, accuracy {fmt(c['accuracy_autoguidance'], '.4f')}; "
            f"unguided ELIT b=1: FD {fmt(c['fd_unguided'])}.")
