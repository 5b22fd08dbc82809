"""The main job: the active-learning loop (DRAL Algorithm 1) with the configured strategy, on Ray.

    python -m trainers.run_job --config tune_configs/synthetic.yaml [--set strategy=random --set seed=1]
    ray job submit --working-dir . -- python -m trainers.run_job --config tune_configs/synthetic.yaml
    python -m trainers.run_job --config tune_configs/synthetic.yaml --local   # one process, no Ray

The job joins the cluster it is submitted to ($RAY_ADDRESS, or `--set ray.address=HOST:PORT`) and
starts a local Ray when there is none. Agent and labelling service run as actors, the round's
queries on `ray.env_workers` environment workers, pre-training and fine-tuning through Ray Train.

Writes to `output_dir`: answers/ (Parquet answer log), rounds.parquet (metrics per round),
summary.json, curve.png, model.pt (latest CNN), strategy.pt (e.g. the DRAL agent), config.yaml;
Ray Train checkpoints go to `ray.storage_path`. Started again with the same config, it resumes.

The loop logs one line per round (answers, mAP, rank-1, elapsed); at the end this prints the table, the paths of summary.json,
curve.png and model.pt, and the command that serves the model. Ray's own console output is off unless
--verbose (trainers/cli.py).
"""
import os
import shlex
import sys
from pathlib import Path

from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import LoopJob, load_config
from reidloop.config.serve import ServeConfig
from reidloop.engine.evaluate import format_metrics

from .cli import load, parser, run_or_exit

SERVE_CONFIG = "tune_configs/serve.yaml"  # what `make serve` serves with (Makefile's SERVE_CONFIG)


def serve_commands(job: LoopJob, serve_config: str = SERVE_CONFIG) -> tuple[str, str]:
    """``make serve ...`` and the ``python -m trainers.serve ...`` it runs, for this run's model.pt."""
    model = Path(job.output_dir) / "model.pt"
    sets = [f"--set checkpoint={shlex.quote(str(model))}"]
    try:
        size = load_config(ServeConfig, serve_config)
        same_size = (size.height, size.width) == (job.data.height, job.data.width)
    except Exception:  # (not run from the repository root) name the size anyway
        same_size = False
    extra = [] if same_size else [f"--set height={job.data.height}", f"--set width={job.data.width}"]
    make = f"make serve CHECKPOINT={shlex.quote(str(model))}" + (
        f" ARGS={shlex.quote(' '.join(extra))}" if extra else "")
    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) else "python"
    python = " ".join([exe, "-m trainers.serve --config", serve_config, *sets, *extra])
    return make, python


def summary_lines(job: LoopJob, result) -> list[str]:
    out = Path(result.output_dir)
    make, python = serve_commands(job)
    return [f"summary:  {out / 'summary.json'}", f"curve:    {out / 'curve.png'}", f"model:    {out / 'model.pt'}",
            f"serve it: {make}", f"      or: {python}"]


def run(job: LoopJob, progress: bool = True, local: bool = False):
    page = None
    if job.oracle.mode == "human":
        from services.annotator_page import AnnotatorPage

        page = AnnotatorPage(job.annotator)
    on_board = page.open if page is not None else None
    if local:
        loop = ActiveLearningLoop(job, progress=progress, on_board=on_board)
    else:
        from services.ray_loop import RayActiveLearningLoop, connect

        loop = RayActiveLearningLoop(job, progress=progress, on_board=on_board)
        connect(job.ray)
    try:
        result = loop.run()
    finally:
        if page is not None:
            page.close()
    rows = {f"round {r['round']} ({r['answers']} answers)": r for r in result.rounds}
    print(format_metrics(rows))
    print("\n".join(summary_lines(job, result)), flush=True)
    return result


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--local", action="store_true", help="run the loop in this process, without Ray")
    args = p.parse_args(argv)
    run_or_exit(run, load(LoopJob, args), progress=not args.quiet, local=args.local)


if __name__ == "__main__":
    main()
