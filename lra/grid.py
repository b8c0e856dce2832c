"""`make lra-all`: the benchmark grid (tasks x attentions x seeds) in one command, then its table.

Runs one Hydra sweep of `lra.train` over the grid, under a protocol, on one launcher, and
aggregates the runs with `lra.results` into results/<tag>/. The default grid is
conf/experiment/lra_all.yaml's (every task x every attention of the MRA paper's comparison, on
the prepared LRA data); each option narrows or changes it:

  python -m lra.grid --tasks listops,text --attentions softmax,mra2 --seeds 0,1,2
  python -m lra.grid --data mini --trainer smoke          # the whole grid on CPU, no data needed
  python -m lra.grid --protocol lra_original --launcher slurm hydra.launcher.partition=gpu

Re-running the same command resumes: finished runs are skipped, an interrupted one continues
from its last checkpoint. On data=lra, a task that is not prepared stops the sweep before any
run, with the command that prepares it (lra.preflight).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from data_prep import tasks

from .cli import UserError, call
from .overrides import CONF, group_options
from .results import aggregate

ROOT = Path(__file__).resolve().parents[1]
# Launchers: Hydra's basic one (jobs one after another, in this process), the joblib plugin
# (parallel local processes) and submitit's SLURM launcher, bare or with our defaults
# (conf/hydra/launcher/slurm.yaml). The plugins are the `launchers` extra of pyproject.toml.
LAUNCHERS = ("basic", "joblib", "submitit_slurm", "slurm")


def default_grid() -> dict[str, str]:
    """The tasks and attentions of conf/experiment/lra_all.yaml's sweep: the tasks that the
    data_prep registry puts in the grid, the attentions the file lists."""
    params = OmegaConf.load(CONF / "experiment" / "lra_all.yaml").hydra.sweeper.params
    return {"task": ",".join(tasks.grid_names()), "attention": params.attention}


# Presets of conf/experiment/ that are other commands' (`make demo`, this sweep's own default
# grid), not protocols a grid can run under.
NOT_PROTOCOLS = ("demo", "lra_all")


def protocol_override(protocol: str) -> str:
    """A protocol of conf/protocol/ (per-task values), or a whole preset of conf/experiment/
    (such as reproduce_mra, the published harness's settings)."""
    protocols = group_options("protocol")
    presets = [e for e in group_options("experiment") if "/" not in e and e not in NOT_PROTOCOLS]
    if protocol in protocols:
        return f"protocol={protocol}"
    if protocol in presets:
        return f"+experiment={protocol}"
    raise UserError(f"--protocol {protocol}: not a protocol; choices: "
                    f"{', '.join(protocols + presets)} (conf/protocol/, or a preset of "
                    "conf/experiment/)")


def sweep(overrides: list[str]) -> int:
    """Run `python -m lra.train -m <overrides>` from the checkout's root; its exit status."""
    cmd = [sys.executable, "-m", "lra.train", "-m", *overrides]
    print("$", "python", *cmd[1:], flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def parser() -> argparse.ArgumentParser:
    grid = default_grid()
    ap = argparse.ArgumentParser(
        prog="python -m lra.grid", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other argument is passed to every run as an lra.train override "
               "(e.g. trainer.accumulate=2, hydra.launcher.n_jobs=2).")
    ap.add_argument("--tasks", default=grid["task"], help="comma-separated (default: %(default)s)")
    ap.add_argument("--attentions", default=grid["attention"],
                    help="comma-separated (default: %(default)s)")
    ap.add_argument("--seeds", default="0", help="comma-separated (default: %(default)s)")
    ap.add_argument("--data", default="lra", choices=("lra", "mini"),
                    help="the prepared LRA data, or the offline mini stand-ins (default: "
                         "%(default)s)")
    ap.add_argument("--protocol", default="small_protocol",
                    help="small_protocol (the Nystromformer/MRA harnesses'), lra_original (the "
                         "JAX configs') or a preset of conf/experiment/ such as reproduce_mra "
                         "(default: %(default)s)")
    ap.add_argument("--launcher", default="basic", choices=LAUNCHERS,
                    help="basic: one run after another; joblib: parallel local processes; "
                         "slurm: one SLURM job per run (default: %(default)s)")
    ap.add_argument("--trainer", default="default",
                    help="a conf/trainer/ profile; smoke: 50 steps of 8 examples a run "
                         "(default: %(default)s)")
    ap.add_argument("--tag", default=None,
                    help="names the grid's runs and results (default: "
                         "<protocol>-<data>[-<trainer>])")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "results" / "runs",
                    help="lra.train's runs_dir (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the table and plots go (default: results/<tag>)")
    return ap


def main(argv: list[str]) -> int:
    args, extra = parser().parse_known_args(argv)
    if args.trainer not in group_options("trainer"):
        raise UserError(f"--trainer {args.trainer}: no conf/trainer/{args.trainer}.yaml; "
                        f"choices: {', '.join(group_options('trainer'))}")
    tag = args.tag or "-".join([args.protocol, args.data] + (
        [] if args.trainer == "default" else [args.trainer]))
    out = args.out or ROOT / "results" / tag
    overrides = [f"task={args.tasks}", f"attention={args.attentions}", f"seed={args.seeds}",
                 f"data={args.data}", protocol_override(args.protocol),
                 f"trainer={args.trainer}", f"tag={tag}", f"runs_dir={args.runs_dir}"]
    if args.launcher != "basic":
        overrides.append(f"hydra/launcher={args.launcher}")
    code = sweep(overrides + extra)
    if code != 0:
        return code
    title = f"LRA, {args.protocol}" + ("" if args.trainer == "default" else
                                       f" (trainer={args.trainer}: not the protocol's length)")
    # With logger=wandb every run logs to wandb, and so does the aggregation: one summary run.
    aggregate(args.runs_dir / args.data / tag, out, title=title,
              wandb="logger=wandb" in extra)
    print((out / "results.md").read_text())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(call(lambda: main(sys.argv[1:])))
