"""``brainjax convert-brainlm --src DIR --out DIR``: BrainLM's PyTorch weights to safetensors, once.

BrainLM's ViT-MAE checkpoints (``vitmae_111M``, ``vitmae_650M`` of the Hugging Face repo vandijklab/brainlm)
ship ``config.json`` + ``pytorch_model.bin``, a pickle. brainjax loads only safetensors
(:func:`brainjax.models.vitmae_loading.load_vitmae`), so this command reads the pickle once, with
``torch.load(weights_only=True)`` (tensors only, no code), and writes ``OUT/model.safetensors`` with the same
tensor names plus a copy of ``config.json``. It needs PyTorch (a CPU build is enough); nothing else does.
"""

from __future__ import annotations

import argparse

HELP = "convert a BrainLM (Hugging Face ViT-MAE) pytorch_model.bin directory to safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="DIR",
                        help="directory with config.json and pytorch_model.bin (or its sharded index)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write model.safetensors into")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/model.safetensors")


def main(args: argparse.Namespace) -> int:
    from brainjax.models.vitmae_loading import convert_bin_to_safetensors, read_config

    target = convert_bin_to_safetensors(args.src, args.out, overwrite=args.overwrite)
    cfg = read_config(target.parent)
    print(f"wrote {target} (ViT-MAE: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, image "
          f"{cfg.image_size[0]}x{cfg.image_size[1]}, patch {cfg.patch_size[0]}x{cfg.patch_size[1]}, "
          f"{cfg.num_channels} channels)")
    return 0
