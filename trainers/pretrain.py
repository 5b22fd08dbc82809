"""Pre-train (or fully fine-tune) a Re-ID model on a dataset, then evaluate it.

    python -m trainers.pretrain --config tune_configs/pretrain_synthetic.yaml [--set train.epochs=5]
"""
from reidloop.config import PretrainJob
from reidloop.engine.jobs import run_pretrain

from .cli import load, parser, run_or_exit


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    run_or_exit(run_pretrain, load(PretrainJob, args), progress=not args.quiet)


if __name__ == "__main__":
    main()
