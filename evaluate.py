"""FID, sFID, Inception Score, precision and recall of a sample batch against an ADM reference batch.

    python evaluate.py --samples samples/RUN.npz --ref VIRTUAL_imagenet256_labeled.npz \
        --inception-weights pt_inception-2015-12-05-6726825d.pth [--out metrics.json]
    python evaluate.py --samples S.npz --ref R.npz --feature-network net.pt      # small datasets (no sFID)

Prints a table and writes the metrics as JSON (atomically). The protocol, the weights file and the
feature-network interface are described in `evaluation/__init__.py`.
"""

from __future__ import annotations

import os
import sys
import warnings

from config import EvalConfig, parse_config, to_dict
from errors import UserError, run_main


def default_out_path(cfg: EvalConfig) -> str:
    """SAMPLES_vs_REF[_NETWORK].json beside the samples: evaluations against other references or with other
    networks never overwrite each other."""
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    name = f"{stem(cfg.samples)}_vs_{stem(cfg.ref)}" + (f"_{stem(cfg.feature_network)}" if cfg.feature_network else "")
    return os.path.join(os.path.dirname(os.path.abspath(cfg.samples)), name + ".json")


def format_table(metrics: dict) -> str:
    rows = [("FID", "fid"), ("sFID", "sfid"), ("Inception Score", "inception_score"), ("Precision", "precision"),
            ("Recall", "recall"), ("Classifier accuracy", "classifier_accuracy")]
    lines = [f"{'metric':<20} {'value':>10}"]
    for label, key in rows:
        value = metrics.get(key)
        if value is None and key == "classifier_accuracy":
            continue
        lines.append(f"{label:<20} {'n/a' if value is None else f'{value:.4f}':>10}")
    source = metrics["reference_statistics"]
    lines.append(f"samples {metrics['num_samples']}, reference {metrics['num_reference']} "
                 f"(FID statistics {source.get('fid')}, sFID {source.get('sfid') or 'n/a'})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"   # one line each
    cfg = parse_config(EvalConfig, argv)
    if not cfg.samples or not cfg.ref:
        raise UserError("both --samples S.npz and --ref REF.npz are required")
    for flag, path in (("--samples", cfg.samples), ("--ref", cfg.ref)):
        if not os.path.isfile(path):
            raise UserError(f"{flag}: file not found: {path}")
    out = cfg.out or default_out_path(cfg)

    import evaluation                                      # after argument checks: imports torch

    try:
        network = evaluation.load_network(cfg.inception_weights, cfg.feature_network, cfg.device)
        metrics = evaluation.evaluate(cfg.samples, cfg.ref, network, batch_size=cfg.batch_size,
                                      cache_ref=cfg.cache_ref, progress=True)
    except evaluation.EvalInputError as e:
        raise UserError(str(e)) from e
    print(format_table(metrics))
    record = dict(metrics, samples=os.path.abspath(cfg.samples), ref=os.path.abspath(cfg.ref), config=to_dict(cfg))
    evaluation.write_json(out, record)
    print(f"metrics written to {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    run_main(main)
