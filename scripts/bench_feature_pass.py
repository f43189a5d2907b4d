"""The cached-feature LP's one feature pass (eval mode, inference, fp32): channels-last images against contiguous
ones, in pairs run back to back, per architecture, image size and batch size. Random weights: only the time counts.

    taskset -c 2,3 python scripts/bench_feature_pass.py --device cpu --threads 2 --sizes 64 --batch_sizes 32 64 128
    python scripts/bench_feature_pass.py --device cuda --sizes 64 224 --batch_sizes 128 --images 2048 --pairs 5
"""

from __future__ import annotations

import argparse
import time

import timm
import torch


def feature_pass_seconds(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, channels_last: bool, device: torch.device
) -> float:
    """What `StoredFeatures.compute` does per batch: forward_features, then the pooled pre-logits."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            model.forward_head(model.forward_features(batch), pre_logits=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--archs", nargs="+", default=["tf_efficientnet_lite0", "densenet121"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.images} images")
    for arch in args.archs:
        model = timm.create_model(arch, pretrained=False, num_classes=4).to(device).eval()
        for size in args.sizes:
            images = torch.rand(args.images, 3, size, size, device=device)
            for batch_size in args.batch_sizes:
                for channels_last in (False, True):  # warm-up
                    feature_pass_seconds(model, images, batch_size, channels_last, device)
                pairs = [
                    [feature_pass_seconds(model, images, batch_size, layout, device) for layout in (False, True)]
                    for _ in range(args.pairs)
                ]
                ratios = sorted(last / contiguous for contiguous, last in pairs)
                print(
                    f"{arch} {size} px batch {batch_size}: contiguous "
                    f"{', '.join(f'{contiguous:.2f}' for contiguous, _ in pairs)} s, channels-last / contiguous "
                    f"{', '.join(f'{r:.2f}' for r in ratios)} (median {ratios[len(ratios) // 2]:.2f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
