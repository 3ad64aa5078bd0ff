"""Released weights without pickles: a checkpoint's EMA weights as safetensors plus a JSON of its model and data.

    python -m models.export results/run/checkpoints/0400000.pt release/
        -> release/model.safetensors   the EMA state dict (safetensors: tensors only, nothing executes on load)
           release/model.json          {"format", "arch", "dataset", "step", "path_type", "exported_from"}

The JSON is also stored in the safetensors header (metadata key "model_json"), so the .safetensors file alone
is enough. `load_export` reads either; `read_checkpoint` is the one reader of the sampling scripts
(generate.py, elit_multibudget_inference.py through `sampling/load.py`):

    a folder or a .safetensors file     an export (no pickle)
    a .pt of ours                       models.checkpoint.load_checkpoint (weights_only)
    a .pt holding a plain state dict    converted in memory by models.convert.convert_state_dict: the public
                                        SiT-XL/2 and REPA SiT-XL/2 releases load directly (models/layouts.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from utils.atomic import atomic_write, write_json
from utils.errors import UserError, run_main

from . import build_from_arch
from .checkpoint import not_ours, read_torch_file
from .convert import convert_state_dict
from .layouts import LAYOUTS, detect_layout, is_state_dict

FORMAT = "elit-sit-export/1"
WEIGHTS_FILE, JSON_FILE, METADATA_KEY = "model.safetensors", "model.json", "model_json"


def export_checkpoint(ckpt: dict, out_dir: str, source: str = "", weights: str = "ema") -> str:
    """Write `ckpt`'s `weights` as out_dir/model.safetensors and its description as out_dir/model.json."""
    if weights not in ckpt:
        raise UserError(f"the checkpoint has no '{weights}' weights")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    info = dict(format=FORMAT, arch=ckpt["arch"], dataset=ckpt.get("dataset"), step=int(ckpt.get("step", 0) or 0),
                path_type=str(config.get("path_type", "linear")), weights=weights, exported_from=source)
    # safetensors refuses shared or strided storage: give every tensor its own contiguous copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt[weights].items()}
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(info)})
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, WEIGHTS_FILE), lambda f: f.write(blob))
    write_json(os.path.join(out_dir, JSON_FILE), info, indent=2)
    return out_dir


def load_export(path: str) -> dict:
    """An export (its folder or its .safetensors) -> a checkpoint dict: arch, ema, dataset, step, config."""
    weights = os.path.join(path, WEIGHTS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(weights):
        raise UserError(f"no exported weights at {weights} (write them with `python -m models.export CKPT DIR`)")
    try:
        with safe_open(weights, framework="pt") as f:
            header = (f.metadata() or {}).get(METADATA_KEY)
        state_dict = load_file(weights)
    except Exception as e:       # safetensors raises its own error types for truncated or foreign files
        raise UserError(f"cannot read {weights}: not a safetensors file or truncated ({type(e).__name__})") from None
    beside = os.path.join(os.path.dirname(weights), JSON_FILE)
    try:
        if os.path.isfile(beside):
            with open(beside) as f:
                info = json.load(f)
        else:
            info = json.loads(header) if header else None
    except ValueError as e:
        raise UserError(f"cannot parse the description of {weights}: {e}") from None
    if not isinstance(info, dict) or "arch" not in info:
        raise UserError(f"{weights} has no model description (model.json beside it or '{METADATA_KEY}' metadata)")
    return {"arch": info["arch"], "ema": state_dict, "dataset": info.get("dataset"), "step": info.get("step", 0),
            "config": {"path_type": info.get("path_type", "linear"), "exported_from": info.get("exported_from")}}


def load_exported_model(path: str) -> torch.nn.Module:
    """The model of an export, built by `build_from_arch` and loaded strictly, in eval mode."""
    ckpt = load_export(path)
    model = build_from_arch(ckpt["arch"])
    model.load_state_dict(ckpt["ema"], strict=True)
    return model.eval()


def is_export(path: str) -> bool:
    return os.path.isdir(path) or path.endswith(".safetensors")


def ours_from_object(obj, path: str) -> dict | None:
    """A loaded file -> a checkpoint dict of ours: ours as it is, a plain state dict converted in memory; None
    for anything else (e.g. a reference checkpoint, which `sampling/load.py` converts)."""
    if isinstance(obj, dict) and "arch" in obj:
        return obj
    if not is_state_dict(obj):
        return None
    try:
        model, notes = convert_state_dict(obj)
    except ValueError as e:
        raise UserError(f"{path} is a plain state dict that does not describe its model here ({e}); convert "
                        f"it with `python -m models.convert --ckpt {path} --out OURS.pt [--model/--set]`") from None
    for note in notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    sd = model.state_dict()
    layout = detect_layout(obj)
    return {"arch": model.arch, "ema": sd, "model": sd, "step": 0,
            "config": {"converted_from": os.path.abspath(path), "layout": LAYOUTS[layout].source}}


def read_checkpoint(path: str) -> dict:
    """Any weights the sampling scripts accept (see the module docstring) -> a checkpoint dict of ours."""
    if is_export(path):
        return load_export(path)
    ckpt = ours_from_object(read_torch_file(path), path)    # one read, CRC-checked: a bit flip is refused
    if ckpt is None:
        raise not_ours(path)
    return ckpt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Export a checkpoint's EMA weights as safetensors + model.json.")
    p.add_argument("ckpt", help="a checkpoint of train.py or models.convert (or a public SiT/REPA state dict)")
    p.add_argument("out_dir", help="folder to write model.safetensors and model.json into")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="which weights to export")

    def run(args):
        ckpt = read_checkpoint(args.ckpt)
        export_checkpoint(ckpt, args.out_dir, source=os.path.abspath(args.ckpt), weights=args.weights)
        print(f"wrote {os.path.join(args.out_dir, WEIGHTS_FILE)} and {JSON_FILE} ({ckpt['arch']['name']})")

    run_main(lambda: run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
