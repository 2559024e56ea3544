"""Evaluate a trained task: ``python scripts/evaluate.py --model runs/x --data test.csv --out reports/x``."""
import sys

from ecomnlp.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
