"""Train one task: ``python scripts/train.py --config configs/<task>.yaml [--trainer.max_steps N]``."""
import sys

from ecomnlp.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
