"""Save a trained pipeline in the hub format (safetensors + JSON configs + a model card with a sample grid), ready
for ``GRNPipeline.from_pretrained(<folder>)`` and for the Hugging Face hub.

    python scripts/export_pretrained.py runs/quickstart/c2i/checkpoints/last.ckpt grn-digits
    python scripts/export_pretrained.py runs/t2iv_digits/t2i/checkpoints/last.ckpt grn-t2i-digits \\
        --height 32 --width 32 --prompts "a handwritten three" "a handwritten seven"
    python scripts/export_pretrained.py runs/quickstart/c2i/checkpoints/last.ckpt grn-digits --push me/grn-digits

The sampler settings saved as the model's defaults are those the run trained and reported with (the checkpoint's
``hyper_parameters.sampler``), unless ``--sampler-defaults`` is given. The card's metrics come from the run's
``metrics.json`` / ``t2iv_metrics.json`` when the checkpoint lies in its run directory (or ``--metrics``).
``--push`` uploads the folder with your Hugging Face token (``huggingface-cli login``, ``HF_TOKEN`` or ``--token``).
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    from grn.pipeline import GRNPipeline
    from grn.sampling.config import SamplerConfig, migrate_keys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a generator or T2I/T2V checkpoint (.ckpt, export, official C2I file)")
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--task", default=None, help="c2i | t2i | t2v | i2v (default: from the checkpoint)")
    parser.add_argument("--tokenizer-ckpt", default=None, help="default: the one the checkpoint records")
    parser.add_argument("--ema", default="ema1", help="which EMA's weights (ema1, ema2, ...; 'none': live ones)")
    parser.add_argument("--sampler-defaults", action="store_true",
                        help="save SamplerConfig's defaults instead of the run's sampler settings")
    parser.add_argument("--metrics", default=None, help="a metrics JSON for the card (default: the run's)")
    parser.add_argument("--data", default=None, help="the training data's name for the card (default: the run's)")
    parser.add_argument("--no-grid", action="store_true", help="do not sample the card's grid")
    parser.add_argument("--classes", type=int, nargs="*", default=None, help="C2I grid classes (default 0..9)")
    parser.add_argument("--prompts", nargs="*", default=None, help="text models' grid prompts")
    parser.add_argument("--height", type=int, default=256, help="text models' grid size")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--push", default=None, metavar="OWNER/NAME", help="also upload to this hub repo")
    parser.add_argument("--token", default=None, help="Hugging Face token (default: your login / HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    args = parser.parse_args(argv)

    ema = None if args.ema.lower() == "none" else args.ema
    pipe = GRNPipeline.from_pretrained(args.ckpt, task=args.task, tokenizer_ckpt=args.tokenizer_ckpt, ema=ema)
    stored = (pipe.origin.get("hparams") or {}).get("sampler")
    if stored and not args.sampler_defaults:
        pipe.sampler = SamplerConfig.build(migrate_keys(stored))
    grid: dict | bool = False
    if not args.no_grid:
        grid = ({"classes": args.classes} if args.classes else {}) if pipe.task == "c2i" else {
            "height": args.height, "width": args.width, **({"prompts": args.prompts} if args.prompts else {})}
        grid = grid or True
    out = pipe.save_pretrained(args.out, metrics=args.metrics, data=args.data, grid=grid, repo_id=args.push)
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if args.push:
        from grn.hub import push_folder

        url = push_folder(out, args.push, args.token, args.private or None)
        print(json.dumps({"pushed": args.push, "commit": url}))


if __name__ == "__main__":
    from grn.entrypoints.errors import cli_errors

    cli_errors(main)()
