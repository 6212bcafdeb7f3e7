"""``python -m sam_core finetune IMAGES_DIR LABELS_DIR --out model.pth``: fine-tune on your own masks."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on image and instance label pairs",
        description="Fine-tune a SAM model on pairs of images and instance label images (files paired by "
        "name, PNG or TIFF; 0 = background, each other value one object). The image encoder is frozen "
        "by default and its embeddings computed once; the mask decoder trains on simulated clicks and "
        "boxes. The output is written after every epoch in the official checkpoint format; a rerun "
        "with the same output resumes after the last finished epoch.",
    )
    parser.add_argument("images", metavar="IMAGES_DIR", help="folder of images")
    parser.add_argument("labels", metavar="LABELS_DIR", help="folder of label images with the same file names")
    parser.add_argument("--out", required=True, metavar="FILE", help="fine-tuned checkpoint to write (.pth)")
    parser.add_argument("--model", default="demo", help="model to start from (default: demo)")
    parser.add_argument("--checkpoint", metavar="FILE", help="start from this checkpoint file instead of the zoo's")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--train-encoder", action="store_true", help="train the whole model, not only the decoder")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images kept for validation")
    parser.add_argument("--cache-dir", metavar="DIR", help="keep image embeddings in this folder")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default cpu)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if OUT exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam_core.cache import EmbeddingCache
    from sam_core.fileio import check_output_path
    from sam_core.progress import TqdmProgress
    from sam_core.train.finetune import finetune, load_pairs
    from sam_core.zoo import load_model

    out = Path(args.out).expanduser()
    check_output_path(out, option="--out")
    images, labels = load_pairs(args.images, args.labels)
    model = load_model(args.model, args.checkpoint, device=args.device)
    cache = EmbeddingCache(directory=args.cache_dir) if args.cache_dir else None
    with TqdmProgress("fine-tuning", disable=args.quiet) as bar:
        result = finetune(model, images, labels, epochs=args.epochs, lr=args.lr, train_encoder=args.train_encoder,
                          val_fraction=args.val_fraction, cache=cache, progress=bar, checkpoint_path=out,
                          resume=not args.no_resume)
    for record in result.history:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in record.val.items()) or "no validation images"
        loss = "" if record.loss is None else f" loss {record.loss:.4f}"
        print(f"epoch {record.epoch}{loss}: validation mean IoU {scores}")
    print(f"wrote {out}")
    return 0
