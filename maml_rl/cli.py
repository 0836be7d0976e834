"""The ``maml-rl`` command line: ``train`` (and ``presets``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maml_rl.config import ConfigError, load_config, preset_names


def _train(args: argparse.Namespace) -> int:
    from maml_rl.config import parse_overrides
    from maml_rl.trainer import train

    if args.resume:
        run_dir = train(
            None,
            run_dir=args.resume,
            resume=True,
            stdout=not args.quiet,
            resume_overrides=parse_overrides(args.set),
        )
    else:
        config = load_config(args.config, args.set)
        run_dir = train(config, stdout=not args.quiet)
    print(f"run folder: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maml-rl", description="Model-Agnostic Meta-Learning for RL (MAML-TRPO)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="meta-train a policy with MAML-TRPO")
    p.add_argument(
        "--config",
        default="navigation",
        help=f"preset name ({', '.join(preset_names())}) or a YAML file",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set seed=2 inner_lr=0.5 device=cuda",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (--set may then change only "
        "num_iterations, checkpoint_every, progress_bar, device and thread counts)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-iteration table on stdout")
    p.set_defaults(func=_train)
    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=lambda a: print("\n".join(preset_names())) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"maml-rl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
