"""Command line of the reproduction workflow (also the console script ``benchmarl-pow-reproduce``).

Run a set (extra ``key=value`` arguments are passed to every ``run.py`` job as Hydra overrides)::

    python -m benchmarl_pow.reproduce predator_prey --budget quick --tasks predator_prey/punish_4 \
        --algorithms pow_qmix qmix_lambda --seeds 0 1 2 --jobs 2 --out results/predator_prey
    python -m benchmarl_pow.reproduce intersection --budget paper --launcher submitit_slurm \
        hydra.launcher.partition=cpu

Call the same command again to continue: finished runs are skipped, the others resume from their
newest checkpoint. ``python -m benchmarl_pow.reproduce status results/predator_prey`` shows where
each run stands. ``python -m benchmarl_pow.reproduce pack results/predator_prey carry/`` copies the
runs without their replay dumps, to continue them on another machine (see
:mod:`benchmarl_pow.reproduce.pack`). Then::

    python -m benchmarl_pow.reproduce plot results/predator_prey --out results/predator_prey/report
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarl_pow.reproduce.launch import LAUNCHERS, SetRequest, run_set
from benchmarl_pow.reproduce.sets import BUDGETS, SETS, budget_overrides


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarl_pow.reproduce",
        description="Run (or continue) one of the paper's experiment sets through Hydra multirun. "
        "Use 'python -m benchmarl_pow.reproduce plot <folders>' for curves and tables.",
        epilog="Any further key=value argument is a Hydra override for every run.",
    )
    parser.add_argument("set", choices=sorted(SETS), help="the experiment set")
    parser.add_argument("--algorithms", nargs="+", help="default: the paper's for the set")
    parser.add_argument("--tasks", nargs="+", help="default: all tasks of the set")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", choices=BUDGETS, default="quick")
    parser.add_argument(
        "--out", default=None, help="output folder (default: results/<set>_<budget>)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (joblib launcher)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="joblib")
    parser.add_argument(
        "--no-buffer",
        action="store_true",
        help="leave the replay buffer out of checkpoints (a resumed run then refills it)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, launch nothing"
    )
    return parser


def _plot_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarl_pow.reproduce plot",
        description="Learning curves (mean, 95%% CI over seeds), a Table-1-style Markdown table "
        "and the predator-prey probe figures from the runs' marl-eval JSON files.",
    )
    parser.add_argument("folders", nargs="+", help="folders searched for BenchMARL run JSON")
    parser.add_argument("--out", default=None, help="default: <first folder>/report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        parser = argparse.ArgumentParser(
            prog="python -m benchmarl_pow.reproduce status",
            description="One line per run under the folder: job status, newest checkpoint, "
            "last evaluation.",
        )
        parser.add_argument("out", help="a set's output folder")
        args = parser.parse_args(argv[1:])
        from benchmarl_pow.reproduce.launch import status_lines

        print("\n".join(status_lines(args.out)) or f"no runs under {args.out}")
        return 0
    if argv and argv[0] == "pack":
        parser = argparse.ArgumentParser(
            prog="python -m benchmarl_pow.reproduce pack",
            description="Copy a set's runs without their replay dumps (each run's newest "
            "checkpoint, logs and results) to carry them to another machine. Copy the pack back "
            "under an output folder (cp -r DEST/. OUT/) and run the set again: each run resumes "
            "from its checkpoint with an empty replay that refills (not an exact resume).",
        )
        parser.add_argument("out", help="a set's output folder")
        parser.add_argument("dest", help="where the pack goes (outside OUT)")
        args = parser.parse_args(argv[1:])
        from benchmarl_pow.reproduce.pack import MANIFEST, folder_size, pack

        try:
            manifest = pack(args.out, args.dest)
        except ValueError as error:
            print(f"reproduce pack: {error}", file=sys.stderr)
            return 2
        for run in manifest["runs"]:
            frames = run["frames"]
            print(f"  {run['seed_folder']:<45} " + (f"ckpt {frames:>9}" if frames else "no checkpoint"))
        size = folder_size(args.dest) / 2**20
        print(f"packed {len(manifest['runs'])} runs into {args.dest} ({size:.1f} MiB, {MANIFEST})")
        return 0
    if argv and argv[0] == "plot":
        args = _plot_parser().parse_args(argv[1:])
        from benchmarl_pow.reproduce.plot import make_report

        out = args.out or str(Path(args.folders[0]) / "report")
        report = make_report(args.folders, out)
        print(f"{report['runs']} runs")
        print(f"table: {report['table']}")
        for path in (*report["curves"], *report["probes"]):
            print(f"figure: {path}")
        print(Path(report["table"]).read_text())
        return 0
    parser = _run_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    experiment_set = SETS[args.set]
    tasks = args.tasks or list(experiment_set.tasks)
    algorithms = args.algorithms or list(experiment_set.algorithms)
    out = args.out or f"results/{args.set}_{args.budget}"
    overrides = budget_overrides(args.set, args.budget, keep_buffer=not args.no_buffer)
    request = SetRequest(
        out=Path(out),
        tasks=tasks,
        algorithms=algorithms,
        seeds=args.seeds,
        budget_overrides=overrides,
        launcher=args.launcher,
        jobs=args.jobs,
        extra=extra,
    )
    return run_set(request, dry_run=args.dry_run)

if __name__ == "__main__":
    sys.exit(main())
