"""Training-speed benchmark of the batching choices, on real reviews.

Compares, on the same rows and the same model (LoRA adapter, forward + backward + step):
  reference  pad every row to the model maximum (512), random batches
  dynamic    pad each batch to its longest row, random batches, max length from the data
  grouped    dynamic padding + length-grouped batches (what `ecomnlp train` does)
Prints rows/s and the speed-up over the reference, plus the share of padded tokens over the
whole training file for each choice.

    python scripts/bench_speed.py [--data FILE --column COL --model NAME --batches N]
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/online_shopping_10_cats/train.csv"))
    parser.add_argument("--column", default="review")
    parser.add_argument("--model", default="e5-small-multilingual")
    parser.add_argument("--batch-size", type=int, default=16, help="32 needs >24 GiB at the reference length")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per choice")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()

    import torch

    from ecomnlp.backbone import Backbone, lora_config
    from ecomnlp.config import LoraSettings
    from ecomnlp.data import LengthGroupedBatches, choose_max_length, collate, read_table, tokenize
    from ecomnlp.models import resolve

    texts = [t for t in read_table(opts.data)[opts.column] if t and t.strip()]
    backbone = Backbone(resolve(opts.model))
    backbone.add_adapter("bench", lora_config(LoraSettings(8, 16, 0.1, ["query", "key", "value", "dense"])))
    backbone.train()
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    limit = backbone.max_positions
    full = tokenize(backbone.tokenizer, [texts], limit)
    max_length = choose_max_length([len(x) for x in full], 98.0, limit)
    data_ids = [x if len(x) <= max_length else x[: max_length - 1] + x[-1:] for x in full]
    pad = backbone.tokenizer.pad_token_id
    bs, n = opts.batch_size, opts.batches * opts.batch_size
    rng = random.Random(0)

    def random_batches(ids: list[list[int]]) -> list[list[int]]:
        order = list(range(len(ids)))
        rng.shuffle(order)
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    grouped = list(LengthGroupedBatches([len(x) for x in data_ids], bs, shuffle=True, seed=0))
    choices = {
        "reference": (full, random_batches(full), limit),
        "dynamic": (data_ids, random_batches(data_ids), None),
        "grouped": (data_ids, grouped, None),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (ids, batches, fixed) in choices.items():
        real = sum(len(ids[i]) for b in batches for i in b)
        computed = sum((fixed or max(len(ids[i]) for i in b)) * len(b) for b in batches)
        timed = batches[1 : 1 + opts.batches]  # batch 0 warms up
        started = None
        for k, batch in enumerate([batches[0], *timed]):
            tensors = collate([ids[i] for i in batch], pad)
            if fixed:
                tensors = {key: torch.nn.functional.pad(v, (0, fixed - v.shape[1]), value=pad if key == "input_ids" else 0)
                           for key, v in tensors.items()}
            if k == 1:
                started = time.perf_counter()
            backbone(**tensors).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        rate = sum(len(b) for b in timed) / (time.perf_counter() - started)
        results[name] = {"rate": rate, "padding": 1 - real / computed}
        print(f"{name:<10} {rate:7.1f} rows/s   padded tokens {1 - real / computed:6.1%} of computed", flush=True)
    reference = results["reference"]["rate"]
    lines = [
        f"Model `{opts.model}`, LoRA r=8, batch {bs}, forward + backward + AdamW step, {n} rows timed per choice; "
        f"padding measured over all {len(texts)} rows of `{Path(opts.data).name}`; max length from the data "
        f"(98th percentile) {max_length} vs model limit {limit}.",
        "",
        "| batching | rows/s | speed-up vs reference | padded share of computed tokens |",
        "|---|---|---|---|",
    ]
    for name, label in (("reference", "pad to model limit, random batches"),
                        ("dynamic", "pad per batch, random batches, data max length"),
                        ("grouped", "pad per batch, length-grouped batches (ecomnlp train)")):
        r = results[name]
        lines.append(f"| {label} | {r['rate']:.1f} | {r['rate'] / reference:.1f}x | {r['padding']:.1%} |")
    text = "\n".join(lines)
    print(text)
    if not opts.no_readme:
        from _bench import write_readme_section

        write_readme_section("bench_speed", text)


if __name__ == "__main__":
    main()
