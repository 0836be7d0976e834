"""The ``maml-rl`` command line: ``train``, ``evaluate``, ``baseline``, ``compare`` (and
``presets``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from maml_rl.compare import add_compare_parser
from maml_rl.config import (
    DEFAULT_CONFIG_NAME,
    ConfigError,
    key_docs,
    load_config,
    preset_names,
    preset_summary,
)
from maml_rl.errors import RunFailure
from maml_rl.settings import ALGORITHM_PAPERS


def _train(args: argparse.Namespace) -> int:
    from maml_rl.config import parse_overrides
    from maml_rl.logger import discard_stdout
    from maml_rl.run import RESUMABLE_KEYS, resume, train

    if args.quiet and not any(s.startswith("progress_bar=") for s in args.set or []):
        args.set = [*(args.set or []), "progress_bar=false"]
    if args.resume:
        if args.config is not None:
            raise ConfigError(
                "--config cannot be used with --resume: a resumed run keeps the config it was "
                "started with (its config.yaml); --set may change only "
                + ", ".join(sorted(RESUMABLE_KEYS))
            )
        run_dir = resume(args.resume, parse_overrides(args.set), stdout=not args.quiet)
    else:
        config = _load_config(args)
        run_dir = train(config, stdout=not args.quiet)
    try:
        print(f"run folder: {run_dir}", flush=True)
    except OSError:  # stdout closed (| head): the run is done all the same
        discard_stdout()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    runs = [*args.runs, *args.compare]
    if not runs and not args.random_init:
        raise ValueError("give a run folder or checkpoint to evaluate, or --random-init --config")
    if args.video:
        from maml_rl.video import configure_gl

        configure_gl()  # before mujoco is imported
    from maml_rl.evaluation import EvalSettings, Method, evaluate, load_method, random_policy

    if len(args.label) > len(runs) + int(args.random_init):
        raise ValueError(f"got {len(args.label)} labels for {len(runs)} runs")
    labels = [*args.label, *([None] * (len(runs) + 1))]
    methods = [load_method(path, label) for path, label in zip(runs, labels)]
    for m in methods:
        if m.kind == "oracle" and args.oracle_deterministic:
            m.deterministic = True
            m.label = m.label if m.label != "oracle" else "oracle (mean action)"
    if args.random_init:
        if args.config is not None:
            config = load_config(args.config, args.set)
        elif methods:
            config = methods[0].config
        else:
            raise ValueError("--random-init needs --config NAME (or a run to take the config from)")
        untrained = Method(labels[len(runs)] or "random init", "random", "random init", config)
        untrained.policy = random_policy(config, untrained.family)
        methods.append(untrained)
    seen: dict[str, int] = {}
    for m in methods:
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in methods:  # two runs of one kind: tell them apart by folder
        if seen[m.label] > 1 and m.kind != "random":
            m.label = f"{m.label} ({_folder(m.source).name})"
    output = args.output
    if output is None:
        name = "evaluation" if args.test_tasks == "seeded" else "evaluation-authors-tasks"
        if runs:
            output = _folder(runs[0]) / name
        else:
            from maml_rl.run_folders import random_init_folder

            output = random_init_folder(methods[0].config) / name
    settings = EvalSettings(
        args.num_tasks,
        args.num_steps,
        args.env_steps,
        args.seed,
        args.alpha,
        args.test_tasks,
        args.eval_episodes,
    )
    evaluate(
        methods,
        settings,
        output,
        plots=not args.no_plots,
        video=args.video,
        video_tasks=args.video_tasks,
    )
    return 0


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _baseline(args: argparse.Namespace) -> int:
    from maml_rl.comparisons import train_oracle, train_pretrained
    from maml_rl.config import parse_overrides

    config = _load_config(args)
    if args.ppo_set and args.kind != "oracle":
        raise ConfigError("--ppo-set applies to --kind oracle only")
    if args.kind == "pretrained":
        run_dir = train_pretrained(config, args.run_dir, args.timesteps, stdout=not args.quiet)
    else:
        run_dir = train_oracle(
            config,
            args.run_dir,
            timesteps=args.timesteps or 1_000_000,
            n_envs=args.n_envs,
            stdout=not args.quiet,
            ppo_kwargs=parse_overrides(args.ppo_set),
        )
    print(f"run folder: {run_dir}")
    return 0


def _load_config(args: argparse.Namespace):  # -> TrainConfig
    """The config of ``--config`` and ``--set``; without ``--config``, TrainConfig's defaults,
    said on stderr (they are the 2D-navigation preset's settings, whatever ``env_id`` is)."""
    if args.config is None:
        print(
            "maml-rl: no --config: the keys --set does not give take their defaults (the "
            "paper's 2D-navigation settings: 20 tasks x 20 episodes, 500 iterations, 2x100 MLP; "
            "`maml-rl train --help` lists every key)",
            file=sys.stderr,
        )
    return load_config(args.config, args.set)


def _add_config_args(
    p: argparse.ArgumentParser, config_help: str | None = None, set_help: str | None = None
) -> None:
    p.add_argument(
        "--config",
        default=None,
        help=config_help
        or "a preset name (`maml-rl presets`) or a YAML file of config keys; default: the "
        f"built-in defaults listed below (run name '{DEFAULT_CONFIG_NAME}')",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help=set_help or "override config keys, e.g. --set seed=2 inner_lr=0.5 device=cuda",
    )


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="meta-test: adapt on held-out test tasks, report returns after 0..N steps",
        description="The paper's protocol: test tasks from a fixed seed (never training's), "
        "returns after 0..N policy-gradient steps (alpha, then alpha/2), fresh rollouts each "
        "step. Prints a table; writes returns.json, returns.csv and plots to --output.",
    )
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="MAML, pretrained or oracle run folders (or checkpoint files), plotted together",
    )
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="more runs to compare")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        help="legend label of each run in order (repeat; default: its kind)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="also evaluate an untrained policy (from --config, else the first run's config)",
    )
    _add_config_args(
        p,
        "the config of --random-init's untrained policy: a preset name (`maml-rl presets`) or "
        "a YAML file; default: the first run's config",
        "override keys of that config, e.g. --set hidden_sizes=[64,64]",
    )
    p.add_argument("--num-tasks", type=int, default=40, help="test tasks (default 40)")
    p.add_argument("--num-steps", type=int, default=3, help="gradient steps (default 3)")
    p.add_argument(
        "--env-steps",
        type=int,
        default=4000,
        help="env steps per gradient step; rollouts per task = ceil(env_steps / H) (default 4000)",
    )
    p.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help="measure each step on this many separate rollouts per task (Meta-World+'s "
        "protocol: --env-steps 5000 --eval-episodes 3 adapts on 10 and evaluates on 3); "
        "default: the rollouts adapted on, as the authors' test scripts",
    )
    p.add_argument("--seed", type=int, default=0, help="test seed (default 0)")
    p.add_argument(
        "--test-tasks",
        choices=["seeded", "authors"],
        default="seeded",
        help="seeded: tasks drawn with --seed (default); authors: the 40 tasks the authors' test "
        "scripts fix (half-cheetah and ant velocity/direction, rllab or v5 variant)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="first step size, later ones alpha/2 (default: the run's inner_lr; a Meta-SGD run "
        "steps with its learned step sizes times alpha/inner_lr)",
    )
    p.add_argument("--output", "-o", default=None, help="output folder (default: RUN/evaluation)")
    p.add_argument(
        "--oracle-deterministic",
        action="store_true",
        help="oracle runs act with their mean action (default: sampled, like every method)",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument(
        "--video",
        action="store_true",
        help="render rollouts before/after adaptation (locomotion; needs EGL or OSMesa)",
    )
    p.add_argument("--video-tasks", type=int, default=2, help="tasks to render (default 2)")
    p.set_defaults(func=_evaluate)


def _add_baseline_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="train a comparison method: pretrained (multi-task TRPO) or oracle (PPO + task)",
    )
    p.add_argument("--kind", required=True, choices=["pretrained", "oracle"])
    _add_config_args(p)
    p.add_argument(
        "--timesteps",
        type=int,
        default=None,
        help="env-step budget (oracle: PPO timesteps, default 1e6; pretrained: sets "
        "num_iterations = ceil(N / (meta_batch_size * episodes_per_task * H)))",
    )
    p.add_argument("--n-envs", type=int, default=8, help="PPO environments (oracle)")
    p.add_argument(
        "--ppo-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="stable-baselines3 PPO arguments (oracle), values as YAML, e.g. --ppo-set "
        "learning_rate=1e-4 'policy_kwargs={log_std_init: -1}' (merged into the defaults)",
    )
    p.add_argument("--run-dir", default=None, help="run folder (default: log_dir/<generated>)")
    p.add_argument("--quiet", action="store_true", help="no training table on stdout")
    p.set_defaults(func=_baseline)


def _curves(args: argparse.Namespace) -> int:
    from maml_rl.plots import plot_training_curves

    if args.label and len(args.label) != len(args.runs):
        raise ValueError(f"got {len(args.label)} labels for {len(args.runs)} runs")
    path = plot_training_curves([Path(r) for r in args.runs], args.output, args.label)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maml-rl",
        description="Model-Agnostic Meta-Learning for RL (MAML-TRPO, MAML-PPO, ProMP).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="meta-train a policy (MAML-TRPO, MAML-PPO or ProMP)",
        description="Meta-train a policy with MAML (the outer optimiser: the algorithm key) into "
        "runs/<env>__<config>__<seed>__<time>.",
        epilog=_keys_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (--set may then change only the iteration count, "
        "checkpointing, progress bar, device, thread counts and the sampling back-end)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no per-iteration table on stdout and no progress bar (progress_bar=false)",
    )
    p.set_defaults(func=_train)
    _add_evaluate_parser(sub)
    _add_baseline_parser(sub)
    add_compare_parser(sub)
    p = sub.add_parser("curves", help="plot training curves (pre/post-adaptation return)")
    p.add_argument("runs", nargs="+", help="run folders (holding progress.csv)")
    p.add_argument("-o", "--output", default="training_curves.png", help="PNG file to write")
    p.add_argument("--label", action="append", help="legend name per run, in order")
    p.set_defaults(func=_curves)
    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=_presets)
    return parser


def _presets(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name.ljust(width)}  {preset_summary(name)}")
    print("\nmaml-rl train --config NAME [--set key=value ...]; keys: maml-rl train --help")
    return 0


def _keys_epilog() -> str:
    """Every config key with its default and what it does, for ``train --help``."""
    lines = ["algorithms (--set algorithm=NAME):"]
    lines += [f"  {name}: {paper}" for name, paper in ALGORITHM_PAPERS.items()]
    lines += ["", "config keys (--set key=value, values as YAML; default in brackets):"]
    for key, default, doc in key_docs():
        shown = "null" if default is None else default
        lines.append(f"  {key} [{shown}]: {doc}")
    return "\n".join(lines)


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
"""A command that cannot be done as given (bad config, path, checkpoint, busy folder): exit 2."""
RUN_FAILURES = (RunFailure, OSError, ImportError, FloatingPointError)
"""The run could not go on (cluster, disk, missing optional package, unusable numbers): exit 1."""


def add_current_folder_to_path() -> None:
    """Append the current folder to ``sys.path`` (after the installed packages, so it never
    hides them), once per process: the ``maml-rl`` console script, unlike ``python -m`` or
    ``python script.py``, does not put it there, and a user's task-family module is looked up
    in it (``env_id=MODULE:ID``, ``env_import``). Called by the command line only; the Python
    API leaves ``sys.path`` to its caller."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every expected failure is one line on stderr (``maml-rl: error:
    ...``) and exit code 2 (the user's input) or 1 (the machine, cluster or numbers)."""
    args = build_parser().parse_args(argv)
    add_current_folder_to_path()  # a user's family module from the current folder
    try:
        return int(args.func(args))
    except USER_ERRORS as err:
        print(f"maml-rl: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RUN_FAILURES as err:
        print(f"maml-rl: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
