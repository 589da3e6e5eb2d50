"""``rsjax convert``: a PyTorch ResNet state_dict (.pth/.th or .safetensors) -> rsjax checkpoint."""
from __future__ import annotations

import argparse

from rsjax.cli.common import emit_json, log

CONVERTIBLE_ARCHS = ["resnet50", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "mobilenet_v2"]
TFLITE_ARCHS = {"mobilenet_v2"}  # read from a .tflite flatbuffer (pip install 'rsjax[tflite]')


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert PyTorch ResNet weights into an rsjax checkpoint",
        description="Read a torchvision-style state_dict (.pth/.th via torch.load(weights_only=True),"
        " possibly wrapped in {'state_dict': ...} and/or prefixed 'module.'; or .safetensors, no"
        " PyTorch needed), map it onto the Flax model and write an rsjax checkpoint.",
    )
    p.add_argument("--arch", required=True, choices=CONVERTIBLE_ARCHS, help="target architecture")
    p.add_argument("--weights", required=True,
                   help="PyTorch weights: .pth, .th, .pt or .safetensors; .tflite for mobilenet_v2")
    p.add_argument("--out", required=True, help="rsjax checkpoint to write")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rsjax.models.convert import convert_file

    log(f"converting {args.weights} -> {args.out} ({args.arch})")
    if args.arch in TFLITE_ARCHS:
        from rsjax.models.tflite_import import convert_tflite_file

        metadata = convert_tflite_file(args.arch, args.weights, args.out)
    else:
        metadata = convert_file(args.arch, args.weights, args.out)
    summary = {"checkpoint": args.out, **metadata}
    if args.json:
        emit_json(summary)
    elif args.arch in TFLITE_ARCHS:
        q = metadata["quantization_checks"]
        log(
            f"wrote {args.out}: {metadata['n_params']:,} parameters from {metadata['source']}"
            f" (sha256 {metadata['source_sha256'][:12]}..., {metadata['n_tensors_converted']} tensors"
            f" dequantized, re-quantization error {q['max_requantization_error']},"
            f" background logit dropped: 1000 classes)"
        )
    else:
        log(
            f"wrote {args.out}: {metadata['n_params']:,} parameters from {metadata['source']}"
            f" (sha256 {metadata['source_sha256'][:12]}..., {metadata['n_tensors_converted']} tensors,"
            f" {metadata['n_tensors_ignored']} num_batches_tracked ignored)"
        )
    return 0
