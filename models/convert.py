"""Load checkpoints of the public reference implementation (SiT / ELIT-SiT / DFM-SiT) into our models.

Reference layout -> ours (everything else has the same name):
    pos_embed                                           dropped (fixed sin-cos table; checked equal to ours)
    projectors.0.*                                      projector.*
    input_token_editor.adapters.0.learned_query_embed   read.queries          (K, D)
    input_token_editor.adapters.0.pos_embed             read.window_pos       (K, D)
    input_token_editor.adapters.0.latent_pos_embed      read.latent_pos       (4096, D) rows at the raster
                                                                              positions of (window, slot) -> (G, K, D)
    ....fit_layer.latents_attend_to_patches.0.*         read.attn.*
    ....fit_layer.read_ff.0.*                           read.mlp.*
    ....fit_layer.adaLN_modulation.1.*                  read.adaLN_modulation.1.*  (first 6 of its 7 chunks: the
                                                                              reference computes a 7th and never uses it)
    output_token_editor.adapters.0.pos_embed            write.window_pos
    ....patches_attend_to_latents.N.* / write_ff.N.*    write.layers.N.attn.* / write.layers.N.mlp.*
    x_embedder.embedders.N / t_embedder.embedders.N     x_embedder.N / t_embedder.N       (DFM)
    final_layer.projections.N                           final_layer.N                     (DFM)

The reference's ELIT Write always attends to every latent slot, so converted ELIT models get
`elit_write_dropped_latents=True` unless the caller's config says otherwise.

Plain state dicts (the public SiT-XL/2 of willisma/SiT, the public REPA SiT-XL/2 `last.pt`, a bare state dict
of ours) go through `models/layouts.py` (the layout table, SiT's sigma half and time direction): the model is
inferred from the keys and shapes unless --model / --set say otherwise (`convert_state_dict`).

ELIT head / tail depths. The reference's head is its `encoder_depth` argument (saved in the checkpoint's args);
its tail ("dit_decoder_depth") is fixed by its model factories and never saved: 2 blocks for its 12-block S/B
models, 4 for L/XL (snap-research/elit, models/sit_elit.py), the same rule as `ELITSiT.default_edge_depth`.
When the args lack them, the depth is counted in the state dict (`blocks.N`) and that rule gives the tail (and,
without encoder_depth, the head, as the factories' `dit_encoder_depth`); `--set` overrides either.

Command line (a reference checkpoint -> a checkpoint our scripts load):
    python -m models.convert --ckpt ref/0400000.pt --model ELIT-SiT-XL/2 --resolution 256 --out converted.pt
    python -m models.convert --ckpt SiT-XL-2-256x256.pt --out sit_xl.pt            # public SiT: all inferred
    python -m models.convert --ckpt repa/last.pt --out repa_xl.pt --set repa_depth=8 # keep REPA's projector
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from utils.errors import UserError, run_main, user_errors

from . import FAMILIES, SIZES, DFMSiT, ELITSiT, SiT, build_model, parse_model_name
from .checkpoint import atomic_save, read_torch_file
from .layouts import LAYOUTS, detect_layout, drop_projector, infer_settings, is_state_dict, to_reference

READ = "input_token_editor.adapters.0."
WRITE = "output_token_editor.adapters.0."

# The reference trains on SD-VAE latents: a resolution in pixels is REFERENCE_LATENT_FACTOR x the latent size.
REFERENCE_LATENT_FACTOR = 8
OUR_SETTINGS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "num_classes", "qk_norm")


@dataclass(frozen=True)
class FamilyConversion:
    """What converting one family's reference checkpoints needs beyond the shared SiT settings."""

    reference_names: dict = field(default_factory=dict)  # reference constructor / argparse name -> our setting
    defaults: dict = field(default_factory=dict)         # settings the reference layout implies, unless given
    infer: Optional[Callable[[dict, dict], dict]] = None  # (state dict, settings) -> the settings it implies


def state_dict_depth(state_dict: dict) -> int:
    """The number of transformer blocks of a (reference or our) state dict: 1 + the largest N of `blocks.N.*`."""
    found = [int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, state_dict) if m]
    if not found:
        raise ValueError("the state dict has no transformer blocks (no 'blocks.N.' keys): not a SiT-family model")
    return max(found) + 1


def infer_elit_depths(state_dict: dict, settings: dict) -> dict:
    """The ELIT head / tail depths `settings` lacks, from the state dict's depth by the reference's factory rule
    (module docstring): tail (and head, without encoder_depth) 2 blocks for depth <= 12, else 4."""
    edge = ELITSiT.default_edge_depth(state_dict_depth(state_dict))
    return {key: edge for key in ("elit_head_depth", "elit_tail_depth") if key not in settings}


# Keyed by model class; a family name finds its entry through the registry: CONVERSIONS[FAMILIES[family]].
CONVERSIONS = {
    SiT: FamilyConversion(),
    ELITSiT: FamilyConversion(
        # For ELIT the reference ties its REPA depth (encoder_depth) to the head depth.
        reference_names={"encoder_depth": "elit_head_depth", "dit_decoder_depth": "elit_tail_depth",
                         "group_size": "elit_group_size"},
        defaults={"elit_write_dropped_latents": True},     # the reference's Write attends to every slot
        infer=infer_elit_depths),
    DFMSiT: FamilyConversion(reference_names={"num_scales": "dfm_stages"}),
}


def config_from_reference(family: str, ref: dict) -> dict:
    """Reference constructor kwargs (or its training args) -> our model settings."""
    conversion = CONVERSIONS[FAMILIES[family]]
    cfg = {k: ref[k] for k in OUR_SETTINGS if k in ref}
    if "resolution" in ref:
        cfg.setdefault("input_size", ref["resolution"] // REFERENCE_LATENT_FACTOR)
    cfg.update({ours: ref[theirs] for theirs, ours in conversion.reference_names.items() if theirs in ref})
    for key, value in conversion.defaults.items():
        cfg.setdefault(key, value)
    return cfg


def _rename(key: str) -> str:
    rules = [
        (r"^projectors\.0\.", "projector."),
        (r"^x_embedder\.embedders\.", "x_embedder."),
        (r"^t_embedder\.embedders\.", "t_embedder."),
        (r"^final_layer\.projections\.", "final_layer."),
        (rf"^{re.escape(READ)}learned_query_embed$", "read.queries"),
        (rf"^{re.escape(READ)}pos_embed$", "read.window_pos"),
        (rf"^{re.escape(READ)}latent_pos_embed$", "read.latent_pos"),
        (rf"^{re.escape(READ)}fit_layer\.latents_attend_to_patches\.0\.", "read.attn."),
        (rf"^{re.escape(READ)}fit_layer\.read_ff\.0\.", "read.mlp."),
        (rf"^{re.escape(READ)}fit_layer\.adaLN_modulation\.", "read.adaLN_modulation."),
        (rf"^{re.escape(WRITE)}pos_embed$", "write.window_pos"),
        (rf"^{re.escape(WRITE)}patches_attend_to_latents\.(\d+)\.", r"write.layers.\1.attn."),
        (rf"^{re.escape(WRITE)}write_ff\.(\d+)\.", r"write.layers.\1.mlp."),
    ]
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def reference_state_dict_to_ours(model: nn.Module, state_dict: dict) -> dict:
    """Rename and reshape a reference-layout state dict for `model` (raises on a positional-table mismatch)."""
    out = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            ours = model.pos_embed
            if hasattr(model, "raster_index"):                      # ELIT keeps tokens in window order
                ours = ours[:, model.raster_index]
            if value.shape != ours.shape or not torch.allclose(value.float(), ours.float(), atol=1e-5):
                raise ValueError("the checkpoint's pos_embed differs from the 2-D sin-cos table of this model "
                                 "(wrong input_size, patch_size or hidden_size?)")
            continue
        new = _rename(key)
        if new == "read.latent_pos":
            raster = torch.arange(model.grid * model.grid).view(1, model.grid, model.grid, 1)
            order = model.to_windows(raster).flatten()              # raster position of each (window, slot)
            if value.shape[0] <= int(order.max()):
                raise ValueError(f"latent_pos_embed has {value.shape[0]} rows, the token grid needs {order.numel()}")
            value = value[order].view(model.windows, model.slots, -1)
        elif new.startswith("read.adaLN_modulation."):
            value = value[: 6 * model.hidden_size]                  # drop the unused 7th chunk
        out[new] = value
    return out


def _pick_name(family: str, cfg: dict) -> str:
    for size, dims in SIZES.items():
        if all(cfg.get(k) == v for k, v in dims.items()):
            return f"{family}-{size}/{cfg.get('patch_size', 2)}"
    return f"{family}-S/{cfg.get('patch_size', 2)}"                # sizes overridden below


def convert_reference(family: str, state_dict: dict, config: dict, name: str | None = None) -> nn.Module:
    """Build our `family` model from `config` (our vocabulary), load the reference `state_dict` strictly.

    `name` (e.g. "ELIT-SiT-XL/2") picks the registry size; without it the size is inferred from `config`.
    Returns the model in eval mode; `model.arch` rebuilds it.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}': choose one of {', '.join(FAMILIES)}")
    cfg = dict(config)
    stage_sizes = cfg.pop("dfm_patch_sizes", None)
    for key, value in CONVERSIONS[FAMILIES[family]].defaults.items():
        cfg.setdefault(key, value)
    if any(k.startswith("projectors.") for k in state_dict):
        if "repa_depth" not in cfg:
            raise ValueError("the checkpoint has a REPA projector: pass repa_depth (the reference's encoder_depth)")
        cfg.setdefault("repa_z_dim", state_dict["projectors.0.4.weight"].shape[0])
    model = build_model(name or _pick_name(family, cfg), **cfg)
    if stage_sizes is not None and list(stage_sizes) != list(model.stage_patch_sizes):
        raise ValueError(f"reference patch sizes {list(stage_sizes)} differ from ours {model.stage_patch_sizes}")
    ours = reference_state_dict_to_ours(model, state_dict)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise ValueError(f"reference checkpoint does not fit {model.arch['name']}: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    return model.eval()


def convert_state_dict(state_dict: dict, name: str | None = None, settings: dict | None = None,
                       layout: str | None = None) -> tuple[nn.Module, list[str]]:
    """A plain state dict (public SiT, public REPA, or a bare one of ours) -> (our model in eval mode, notes).

    The layout is detected from the keys unless given (models/layouts.py); the model settings are read from
    the shapes, `name` (a registry name) and `settings` (our vocabulary) fill in or check the rest. A REPA
    projector is kept when `settings` gives repa_depth (REPA's --encoder-depth), else dropped with a note.
    """
    layout = layout or detect_layout(state_dict)
    sd = to_reference(state_dict, layout)
    settings = dict(settings or {})
    family = parse_model_name(name)[0] if name else "SiT"
    # A single-stage trunk's settings are in its shapes (a multi-stage DFM's come with `name` and `settings`).
    inferred = infer_settings(sd) if not name or "x_embedder.proj.weight" in sd else {}
    if name:                                     # the name's size must be the one of the weights
        _, size, patch = parse_model_name(name)
        for key, value in dict(SIZES[size], patch_size=patch).items():
            if key in inferred and inferred[key] != value and key not in settings:
                raise ValueError(f"the weights have {key}={inferred[key]}, {name} has {value}: pass the "
                                 f"matching --model or --set {key}={inferred[key]}")
    cfg = {**inferred, **settings}
    notes = []
    if "repa_z_dim" in inferred and not cfg.get("repa_depth"):
        sd = drop_projector(sd)
        cfg.pop("repa_z_dim")
        notes.append("the REPA projector was dropped (sampling does not use it); keep it with --set "
                     "repa_depth=N (REPA's --encoder-depth, 8 for its SiT-XL/2)")
    if layout != "ours" and cfg.get("qk_norm"):
        notes.append("qk_norm: timm's q/k LayerNorm (eps 1e-5) becomes ours (eps 1e-6); outputs differ slightly")
    if "input_size" not in cfg:
        raise ValueError("the state dict does not give the input size (no pos_embed): pass --resolution PIXELS "
                         "(SD-VAE latents: 1/8 of it) or --set input_size=N")
    if "num_heads" not in cfg:
        raise ValueError(f"hidden_size {cfg.get('hidden_size')} is no DiT size: pass --set num_heads=N")
    if layout != "ours":
        return convert_reference(family, sd, cfg, name=name), notes
    # Our names already: load as is (the reference rules would reshape ELIT's tables a second time).
    model = build_model(name or _pick_name(family, cfg), **cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the state dict does not fit {model.arch['name']}: "
                         f"{(str(e).strip().splitlines() or ['load_state_dict failed'])[-1].strip()[:300]}") from None
    return model.eval(), notes


# ----------------------------------------------------------------------------------------------------------
REFERENCE_GLOBALS = (argparse.Namespace,)   # the one class a reference checkpoint pickles besides plain data


def load_reference_checkpoint(path: str) -> dict:
    """Reference checkpoints pickle an argparse.Namespace: allow exactly that class, nothing else. A missing,
    truncated, corrupt or foreign file is a one-line UserError."""
    ckpt = read_torch_file(path, "reference checkpoint", "checkpoint", allow=REFERENCE_GLOBALS, zip_only=False)
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a reference checkpoint (a dict with 'ema'/'model' and 'args')")
    return ckpt


def checkpoint_from_reference(ckpt: dict, source: str, entry: str = "ema", name: str | None = None,
                              resolution: int | None = None, settings: dict | None = None) -> tuple[dict, dict]:
    """A loaded reference checkpoint -> (our checkpoint dict, the settings inferred from its state dict).

    `name` (default: its args.model), `resolution` in pixels (default: args.resolution) and `settings` (our
    vocabulary, e.g. {"elit_head_depth": 8}) override what its args say. UserError when it cannot be converted.
    """
    if entry not in ckpt:
        raise UserError(f"{source} has no '{entry}' entry (has: {', '.join(map(str, ckpt))})")
    state_dict = ckpt[entry]
    ref_args = vars(ckpt["args"]) if isinstance(ckpt.get("args"), argparse.Namespace) else {}
    name = name or ref_args.get("model")
    if not name:
        raise UserError(f"{source} does not name its model: pass --model (e.g. ELIT-SiT-XL/2)")
    with user_errors(f"{source}: "):
        family, _, _ = parse_model_name(name)
    recorded = _family_of(ref_args.get("model"))
    if recorded is not None and recorded != family:
        raise UserError(f"{source} holds a {recorded} model ({ref_args['model']}); --model {name} is of another "
                        f"family: pass a {recorded} name")
    cfg = config_from_reference(family, ref_args)
    if resolution:
        cfg["input_size"] = resolution // REFERENCE_LATENT_FACTOR
    if "encoder_depth" in ref_args and any(k.startswith("projectors.") for k in state_dict):
        cfg["repa_depth"] = ref_args["encoder_depth"]
    cfg.update(settings or {})
    conversion = CONVERSIONS[FAMILIES[family]]
    with user_errors(f"cannot convert {source} to {name}: "):
        inferred = conversion.infer(state_dict, cfg) if conversion.infer else {}
        try:
            model = convert_reference(family, state_dict, {**cfg, **inferred}, name=name)
        except (KeyError, RuntimeError, AttributeError) as e:  # shapes or keys of another family
            raise ValueError((str(e).strip().splitlines() or ["load_state_dict failed"])[-1].strip()) from None
    sd = model.state_dict()
    step = int(ckpt.get("steps", ckpt.get("step", 0)) or 0)
    config = {"converted_from": os.path.abspath(source), "entry": entry}
    if ref_args.get("path_type") in ("linear", "cosine"):               # its interpolation path (sampling's SDE)
        config["path_type"] = ref_args["path_type"]
    ours = {"model": sd, "ema": sd, "arch": model.arch, "step": step, "config": config}
    return ours, inferred


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Convert a public-reference checkpoint into this repository's format.")
    p.add_argument("--ckpt", required=True, help="reference checkpoint (.pt with 'ema'/'model' and 'args'), or a "
                   "plain state dict (public SiT / REPA weights)")
    p.add_argument("--out", required=True, help="where to write the converted checkpoint")
    p.add_argument("--model", help="our model name, e.g. ELIT-SiT-XL/2 (default: the checkpoint's args.model)")
    p.add_argument("--resolution", type=int, help="image resolution in pixels (default: args.resolution)")
    p.add_argument("--entry", default="ema", help="state dict to convert: ema (default) or model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra model settings in our vocabulary, e.g. elit_head_depth=8 repa_depth=8")
    p.add_argument("--layout", choices=list(LAYOUTS),
                   help="layout of a plain state dict (default: detected from its keys; models/layouts.py)")

    def run(args):
        ckpt = load_reference_checkpoint(args.ckpt)
        entry = ckpt.get(args.entry) if isinstance(ckpt, dict) and not is_state_dict(ckpt) else None
        sit_training = (is_state_dict(entry) and {"pos_embed", "x_embedder.proj.weight", "final_layer.linear.weight"}
                        <= set(entry) and LAYOUTS[detect_layout(entry)].learn_sigma)  # willisma/SiT train.py's
        if is_state_dict(ckpt) or sit_training:  # public SiT / REPA releases, or a bare state dict of ours
            ckpt = ckpt if entry is None else entry
            settings = {k: eval_literal(v) for k, _, v in (item.partition("=") for item in args.set)}
            if args.resolution:
                settings["input_size"] = args.resolution // REFERENCE_LATENT_FACTOR
            with user_errors():
                model, notes = convert_state_dict(ckpt, args.model, settings, args.layout)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            layout = args.layout or detect_layout(ckpt)
            sd = model.state_dict()
            atomic_save({"model": sd, "ema": sd, "arch": model.arch, "step": 0,
                         "config": {"converted_from": os.path.abspath(args.ckpt), "layout": layout}}, args.out)
            print(f"wrote {args.out} ({model.arch['name']}, {LAYOUTS[layout].source})")
            return
        settings = {}
        for item in args.set:
            key, _, value = item.partition("=")
            settings[key] = eval_literal(value)
        ours, inferred = checkpoint_from_reference(ckpt, args.ckpt, args.entry,
                                                   args.model, args.resolution, settings)
        if inferred:
            print("inferred from the state dict: " + ", ".join(f"{k}={v}" for k, v in inferred.items()))
        atomic_save(ours, args.out)
        print(f"wrote {args.out} ({ours['arch']['name']})")

    run_main(lambda: run(p.parse_args(argv)))


def _family_of(name) -> str | None:
    """The family of a reference args.model in our vocabulary, or None (absent, or a name we do not parse)."""
    try:
        return parse_model_name(name)[0] if name else None
    except ValueError:
        return None


def eval_literal(text: str):
    """A --set value: a Python literal (8, True, 0.5, [2, 4]) or else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    main()
