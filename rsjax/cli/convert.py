"""``rsjax convert``: a PyTorch ResNet state_dict (.pth/.th or .safetensors) -> rsjax checkpoint."""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from rsjax.cli.common import check_writable, emit_json, log

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


TORCH_EXPECTED = ("a PyTorch checkpoint written by torch.save (a zip archive, or a legacy file opening "
                  "with torch's pickled magic number) holding a state_dict")
#: how torch.save's legacy (non-zip) format opens: its magic number 0x1950a86a20f9469cfc6c pickled
#: (protocol byte 0x80, any protocol, then LONG1 of 10 bytes)
TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
SAFETENSORS_EXPECTED = "a .safetensors file (an 8-byte little-endian header length, then a JSON header)"


def check_weights_file(path: str, arch: str) -> None:
    """InputError naming ``path`` unless it exists and starts like the weights ``--arch`` reads:
    a torch.save file (zip or legacy) or a .safetensors file (the TFLite reader checks its
    own file identifier). Catches a wrong file before the unpickler's bare message."""
    from rsjax.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"--weights {path}: file not found")
    if not p.is_file():
        raise InputError(f"--weights {path} is not a file")
    if arch in TFLITE_ARCHS:
        return
    try:
        with open(p, "rb") as f:
            head = f.read(14)
    except OSError as e:
        raise InputError(f"--weights {path} cannot be read: {e.strerror or e}") from None
    if p.name.lower().endswith(".safetensors"):
        size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        ok = len(head) > 8 and head[8:9] == b"{" and 8 + size <= p.stat().st_size
        expected = SAFETENSORS_EXPECTED
    else:
        ok = (head[:1] == b"\x80" and head[2:14] == TORCH_LEGACY_MAGIC) or zipfile.is_zipfile(p)
        expected = TORCH_EXPECTED
    if not ok:
        raise InputError(f"--weights {path} is not {expected}: it starts with {head[:8]!r}")


def run(args: argparse.Namespace) -> int:
    from rsjax.models.convert import convert_file

    check_weights_file(args.weights, args.arch)
    check_writable(args.out)
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
