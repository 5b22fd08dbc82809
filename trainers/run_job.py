"""The main job: the active-learning loop (DRAL Algorithm 1) with the configured strategy.

    python -m trainers.run_job --config tune_configs/synthetic.yaml [--set strategy=random --set seed=1]

Writes to `output_dir`: answers/ (Parquet answer log), rounds.parquet (metrics per round),
summary.json, curve.png, model.pt (latest CNN), strategy.pt (e.g. the DRAL agent), config.yaml.
"""
from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import LoopJob
from reidloop.engine.evaluate import format_metrics

from .cli import load, parser, run_or_exit


def run(job: LoopJob, progress: bool = True):
    result = ActiveLearningLoop(job, progress=progress).run()
    rows = {f"round {r['round']} ({r['answers']} answers)": r for r in result.rounds}
    print(format_metrics(rows))
    print(f"outputs in {result.output_dir}")
    return result


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    run_or_exit(run, load(LoopJob, args), progress=not args.quiet)


if __name__ == "__main__":
    main()
