"""Evaluate a checkpoint (or an untrained / ImageNet model) on a dataset; prints a table, writes JSON.

    python -m trainers.evaluate --config tune_configs/evaluate_cuhk03.yaml --set checkpoint=runs/x/model.pt
"""
from reidloop.config import EvaluateJob
from reidloop.engine.jobs import run_evaluate

from .cli import load, parser, run_or_exit


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    run_or_exit(run_evaluate, load(EvaluateJob, args), progress=not args.quiet)


if __name__ == "__main__":
    main()
