"""`fomo-nnunet inspect CHECKPOINT`, `fomo-nnunet bench pretrain -d ID` and `fomo-nnunet bench campaign`."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="print what a pretrained checkpoint says about itself",
        description="Print a checkpoint's metadata (network class and arguments, patch size, spacing, "
                    "normalisation, input channels, objective and its settings, iterations trained) and its "
                    "parameter count. Loads safely (weights_only): a checkpoint is data, never code.")
    p.add_argument("checkpoint", help="a .pth file, or a results folder (fold_*/checkpoint_final.pth is used)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON only")
    p.set_defaults(func=run_inspect)

    b = sub.add_parser("bench", help="measure throughput (bench pretrain, bench campaign)",
                       description="Throughput measurements.")
    bsub = b.add_subparsers(dest="bench_command", metavar="WHAT")
    bp = bsub.add_parser(
        "pretrain", help="MAE step time and loader throughput against nnU-Net's own nnUNetTrainer",
        description="Time, in one run and on the same plans and patch size, training steps of the MAE trainer "
                    "against nnU-Net's nnUNetTrainer (batches pre-loaded, so loading is not counted), and the "
                    "samples per second each trainer's data loader delivers. Needs a preprocessed dataset "
                    "(nnUNetv2_preprocess -plans_name fomoPretrainPlans). Trainer logs go to a temporary folder.")
    bp.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID")
    bp.add_argument("-p", "--plans", default="fomoPretrainPlans", help="plans name (default: fomoPretrainPlans)")
    bp.add_argument("-c", "--configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    bp.add_argument("-tr", "--trainer", default="nnUNetTrainerFomoMAE",
                    help="MAE trainer to time (default: nnUNetTrainerFomoMAE)")
    bp.add_argument("--baseline", default="nnUNetTrainer", help="baseline trainer (default: nnUNetTrainer)")
    bp.add_argument("--steps", type=int, default=20, help="timed training steps per trainer (default: 20)")
    bp.add_argument("--loader-batches", type=int, default=40,
                    help="batches pulled to time a loader, after draining its prefetch cache (default: 40)")
    bp.add_argument("-device", "--device", default="cpu", choices=["cpu", "cuda"], help="device (default: cpu)")
    bp.add_argument("-o", "--output", default=None, help="also write the figures to this JSON file")
    bp.set_defaults(func=run_bench_pretrain)
    bc = bsub.add_parser(
        "campaign", help="every GPU figure in one command that fits a short loan (campaign.json, campaign.md)",
        description="In the order of value, each part with a deadline (a part cut short keeps what it measured): "
                    "MAE and nnU-Net training steps on the same plans (eager fp16, bf16, channels-last, "
                    "torch.compile; s/step, TFLOP/s, share of the GPU's bf16 peak, peak memory, loss curve against "
                    "eager fp16's); the challenge entry per task as a whole process (import, model load, "
                    "inference, export); the MAE loader's patches/s per worker count; a short MAE pretraining on a "
                    "synthetic 1 mm corpus whose weights (<= 16 MB) come back. The full settings fit 9 minutes on "
                    "one H100/H200; --smoke --device cpu runs every part at tiny size in a few minutes. "
                    "docs/gpu.md says how a lent GPU session runs it.",
        epilog="example: fomo-nnunet bench campaign --out $OUT --device cuda\n"
               "         fomo-nnunet bench campaign --out /tmp/c --device cpu --smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_argument("--out", required=True, metavar="DIR",
                    help="writes campaign.json, campaign.md and pretrain_weights.pth here (created)")
    bc.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="device (default: cuda)")
    bc.add_argument("--smoke", action="store_true", help="every part at tiny size (a CPU check of the campaign)")
    bc.add_argument("--minutes", type=float, default=4.0,
                    help="the pretraining run's wall-clock limit (default 4; less when the campaign's budget is short)")
    bc.add_argument("--work", default=None, metavar="DIR",
                    help="keep the work folder (synthetic data, bundle, logs) here (default: a temporary one, removed)")
    bc.set_defaults(func=run_bench_campaign)
    b.set_defaults(func=lambda a: b.print_help() or 2)


def run_inspect(args: argparse.Namespace) -> int:
    from fomo_nnunet.models.checkpoints import describe_checkpoint, find_checkpoint

    try:
        path = find_checkpoint(args.checkpoint)
        info = describe_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if args.json:
        print(json.dumps(info["fomo_metadata"], indent=2))
        return 0
    print(f"checkpoint: {path}")
    print(f"parameters: {info['num_parameters']:,} in {info['num_tensors']} tensors")
    meta = info["fomo_metadata"]
    if meta is None:
        print("no fomo metadata: not written by a fomo_nnunet trainer (plain nnU-Net checkpoint)")
        return 0
    from fomo_nnunet.models.embedding_stats import DEFAULT_POOLING, POOLING_KEY, STATS_KEY, EmbeddingStats

    width = max(len(k) for k in [*meta, POOLING_KEY])
    if POOLING_KEY not in meta:  # older checkpoints: the default, said as such
        print(f"{POOLING_KEY:<{width}}  {DEFAULT_POOLING} (not recorded: the default)")
    for k, v in meta.items():
        if k == STATS_KEY:  # two vectors the embedding's length: their summary (--json prints them)
            print(f"{k:<{width}}  {EmbeddingStats.from_dict(v).summary()}")
            continue
        print(f"{k:<{width}}  {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def run_bench_pretrain(args: argparse.Namespace) -> int:
    from fomo_nnunet.paths import require_env

    require_env("nnUNet_preprocessed"), require_env("nnUNet_extTrainer")
    from fomo_nnunet.benchmarks.throughput import bench_pretrain, format_report

    r = bench_pretrain(args.dataset, args.plans, args.configuration, args.trainer, args.baseline, args.steps,
                       loader_batches=args.loader_batches, device=args.device)
    print(format_report(r))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def run_bench_campaign(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from fomo_nnunet import exit_codes
    from fomo_nnunet.benchmarks.campaign import FULL, SMOKE, Campaign

    if not args.minutes > 0:
        print(f"error: --minutes must be > 0 (got {args.minutes})", file=sys.stderr)
        return exit_codes.BAD_INPUT
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but torch sees no CUDA device (use --device cpu --smoke for a CPU check)",
                  file=sys.stderr)
            return exit_codes.BAD_INPUT
    command = shlex.join(["fomo-nnunet", "bench", "campaign", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "campaign"] \
        else f"fomo-nnunet bench campaign --out {args.out} --device {args.device} --minutes {args.minutes}" \
        + (" --smoke" if args.smoke else "")
    r = Campaign(args.out, args.device, SMOKE if args.smoke else FULL, args.minutes, args.work, command).run()
    print(f"campaign: {r['elapsed_seconds']} s; " + ", ".join(f"{k} {v['status'].split(':')[0]}"
                                                              for k, v in r["parts"].items()))
    print(f"wrote {args.out}/campaign.json and campaign.md")
    return 0
