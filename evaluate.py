"""FID, sFID, FDD, IS, precision and recall of a sample batch against a reference batch.

    python evaluate.py --samples samples/RUN.npz --ref VIRTUAL_imagenet256_labeled.npz \
        --inception-weights pt_inception-2015-12-05-6726825d.pth \
        [--dinov2-weights dinov2_vitl14_pretrain.pth] [--out metrics.json]
    python evaluate.py --samples S.npz --ref R.npz --feature-network net.pt      # small datasets (no sFID)

Prints a table and writes the metrics as JSON (atomically). FDD (DINOv2 ViT-L/14, EDM2's protocol) is computed
whenever the DINOv2 weights are found (--dinov2-weights, $ELIT_DINOV2_WEIGHTS, torch.hub's or Hugging Face's
cache); otherwise the table says n/a and one line says how to enable it (--fdd: required, --no-fdd: off).
The protocol, the weights files and the feature-network interface are described in `evaluation/__init__.py`.
"""

from __future__ import annotations

import os
import sys
import warnings

import evaluation
from evaluation.options import EvalConfig
from utils.cli import parse_config, to_dict
from utils.errors import UserError, run_main

FDD_SKIPPED = (f"FDD skipped: no DINOv2 ViT-L/14 weights found; to report it pass --dinov2-weights PATH or set "
               f"${evaluation.DINOV2_ENV}=PATH ({evaluation.DINOV2_FILENAME}, or timm's "
               f"vit_large_patch14_dinov2.lvd142m model.safetensors); --no-fdd silences this")


def default_out_path(cfg: EvalConfig) -> str:
    """SAMPLES_vs_REF[_NETWORK].json beside the samples: evaluations against other references or with other
    networks never overwrite each other."""
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    name = f"{stem(cfg.samples)}_vs_{stem(cfg.ref)}" + (f"_{stem(cfg.feature_network)}" if cfg.feature_network else "")
    return os.path.join(os.path.dirname(os.path.abspath(cfg.samples)), name + ".json")


def format_table(metrics: dict) -> str:
    rows = [("FID", "fid"), ("sFID", "sfid"), ("FDD (DINOv2)", "fdd"), ("Inception Score", "inception_score"),
            ("Precision", "precision"), ("Recall", "recall"), ("Classifier accuracy", "classifier_accuracy")]
    lines = [f"{'metric':<20} {'value':>10}"]
    for label, key in rows:
        value = metrics.get(key)
        if value is None and key == "classifier_accuracy":
            continue
        lines.append(f"{label:<20} {'n/a' if value is None else f'{value:.4f}':>10}")
    source = metrics["reference_statistics"]
    lines.append(f"samples {metrics['num_samples']}, reference {metrics['num_reference']} "
                 f"(FID statistics {source.get('fid')}, sFID {source.get('sfid') or 'n/a'}, "
                 f"FDD {source.get('fdd') or 'n/a'})")
    return "\n".join(lines)


def fdd_network(cfg: EvalConfig):
    """The DINOv2 network, or None when FDD is off or (by default) when no weights file is found."""
    if cfg.fdd is False:
        return None
    weights = evaluation.find_dinov2_weights(cfg.dinov2_weights, required=bool(cfg.fdd))
    return evaluation.load_dinov2(weights, cfg.device) if weights else None


def check_networks(cfg: EvalConfig) -> dict:
    """--check: load the networks as an evaluation would and say which files they use."""
    try:
        network, dinov2 = evaluation.load_network(cfg.inception_weights, cfg.feature_network, cfg.device), fdd_network(cfg)
    except evaluation.EvalInputError as e:
        raise UserError(str(e)) from e
    found = {"network": network.info(), "fdd_network": dinov2.info() if dinov2 is not None else None}
    print(f"features: {found['network'].get('weights') or found['network'].get('path')}", file=sys.stderr)
    print(f"FDD: {found['fdd_network']['weights']}" if dinov2 is not None else
          (FDD_SKIPPED if cfg.fdd is None else "FDD: off (--no-fdd)"), file=sys.stderr)
    return found


def main(argv=None) -> dict:
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"   # one line each
    cfg = parse_config(EvalConfig, argv)
    if cfg.check:
        return check_networks(cfg)
    if not cfg.samples or not cfg.ref:
        raise UserError("both --samples S.npz and --ref REF.npz are required")
    for flag, path in (("--samples", cfg.samples), ("--ref", cfg.ref)):
        if not os.path.isfile(path):
            raise UserError(f"{flag}: file not found: {path}")
    out = cfg.out or default_out_path(cfg)
    try:
        evaluation.check_inputs(cfg.samples, cfg.ref)                  # sizes agree: checked before any work
        network = evaluation.load_network(cfg.inception_weights, cfg.feature_network, cfg.device)
        dinov2 = fdd_network(cfg)
        metrics = evaluation.evaluate(cfg.samples, cfg.ref, network, fdd_network=dinov2, batch_size=cfg.batch_size,
                                      cache_ref=cfg.cache_ref, progress=True)
    except evaluation.EvalInputError as e:
        raise UserError(str(e)) from e
    print(format_table(metrics))
    if dinov2 is None and cfg.fdd is None:
        print(FDD_SKIPPED, file=sys.stderr)
    record = dict(metrics, samples=os.path.abspath(cfg.samples), ref=os.path.abspath(cfg.ref), config=to_dict(cfg))
    evaluation.write_json(out, record)
    print(f"metrics written to {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    run_main(main)
