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
"""
from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import LoopJob
from reidloop.engine.evaluate import format_metrics

from .cli import load, parser, run_or_exit


def run(job: LoopJob, progress: bool = True, local: bool = False):
    if local:
        loop = ActiveLearningLoop(job, progress=progress)
    else:
        from services.ray_loop import RayActiveLearningLoop, connect

        loop = RayActiveLearningLoop(job, progress=progress)
        connect(job.ray)
    result = loop.run()
    rows = {f"round {r['round']} ({r['answers']} answers)": r for r in result.rounds}
    print(format_metrics(rows))
    print(f"outputs in {result.output_dir}")
    return result


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--local", action="store_true", help="run the loop in this process, without Ray")
    args = p.parse_args(argv)
    run_or_exit(run, load(LoopJob, args), progress=not args.quiet, local=args.local)


if __name__ == "__main__":
    main()
