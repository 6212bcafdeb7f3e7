"""``python -m sam_core export onnx --model NAME [--checkpoint FILE] --out DIR [--quantize-encoder]``.

Writes ``decoder.onnx`` (prompt encoder + mask decoder, the official SamOnnxModel's inputs and
outputs, any number of points and objects) and ``encoder.onnx`` (the image encoder in float32) into
DIR, and with ``--quantize-encoder`` also ``encoder.int8.onnx``. The files appear only when every
part is done; an interrupted or failed export changes nothing in DIR. ``sam_core.onnx_backend.OnnxPredictor``
runs them with onnxruntime.
"""

from __future__ import annotations

import argparse

from sam_core.cli.options import add_model_args
from sam_core.progress import TqdmProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model for other runtimes (ONNX)",
        description="Export a model for other runtimes.",
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="ONNX files for onnxruntime: decoder, encoder, optional int8 encoder",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_model_args(onnx, device=False)
    onnx.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    onnx.add_argument("--quantize-encoder", action="store_true",
                      help="also write encoder.int8.onnx (dynamic int8 quantization: smaller, faster on CPU)")
    onnx.add_argument("--quiet", action="store_true", help="no progress bar")
    onnx.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run(args: argparse.Namespace) -> int:
    from sam_core.export import export_onnx
    from sam_core.fileio import check_output_path

    check_output_path(args.out, option="--out", folder=True)

    with TqdmProgress(desc="export onnx", disable=args.quiet) as progress:
        files = export_onnx(
            args.model,
            args.out,
            checkpoint=args.checkpoint,
            quantize_encoder=args.quantize_encoder,
            progress=progress,
        )
    for path in (files.decoder, files.encoder, files.encoder_int8):
        if path is not None:
            print(path)
    return 0
