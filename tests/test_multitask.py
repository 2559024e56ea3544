"""Joint multi-task training: the task sampler, one task directory per task, each loadable alone."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ecomnlp
import ecomnlp.multitask
from conftest import NEGATIVE, POSITIVE
from ecomnlp.data import LengthGroupedBatches, tokenize
from ecomnlp.multitask import TaskSampler, task_probabilities
from ecomnlp.predictor import predict_logits

ROOT = Path(__file__).resolve().parents[1]
MULTITASK_CONFIGS = [p for p in sorted((ROOT / "configs").glob("*.yaml"))
                     if isinstance((yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("tasks"), dict)]
ARTIFACT_FILES = ["adapter_config.json", "adapter_model.safetensors", "card.json", "head.safetensors"]
TEXTS = POSITIVE + NEGATIVE + ["", "completely new words here", "好" * 300]
TASKS = {"sentiment": ("review_sentiment", {"text": "review"}),
         "category": ("product_classification", {"text": "review", "label": "cat"})}
TRAINER = {"max_epochs": 4, "lr": 1e-2, "progress_bar": False, "accelerator": "cpu", "devices": 1,
           "log_every_n_steps": 1}

SIZES = {"big": 360, "small": 40}
EXPECTED = {"proportional": {"big": 0.9, "small": 0.1},
            "temperature": {"big": 0.75, "small": 0.25},  # T=2: sqrt(360) : sqrt(40) = 3 : 1
            "uniform": {"big": 0.5, "small": 0.5}}


def _sampler(sampler: str, steps: int | None, seed: int = 0) -> TaskSampler:
    batches = {name: LengthGroupedBatches([3] * n, 4) for name, n in SIZES.items()}
    return TaskSampler(batches, task_probabilities(SIZES, sampler), steps, seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("sampler", list(EXPECTED))
def test_sampled_tasks_follow_the_sampler_probabilities(sampler: str) -> None:
    assert task_probabilities(SIZES, sampler) == pytest.approx(EXPECTED[sampler])  # type: ignore[arg-type]
    steps = 20_000
    drawn = Counter(batch[0][0] for batch in _sampler(sampler, steps))
    assert sum(drawn.values()) == steps
    for name, p in EXPECTED[sampler].items():
        assert drawn[name] / steps == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / steps))


def test_temperature_goes_from_proportional_to_uniform() -> None:
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(EXPECTED["proportional"])
    assert task_probabilities(SIZES, "temperature", 1e6) == pytest.approx(EXPECTED["uniform"], abs=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        task_probabilities(SIZES, "temperature", 0)
    with pytest.raises(ValueError, match="unknown sampler 'random'"):
        task_probabilities(SIZES, "random")  # type: ignore[arg-type]


def test_sampler_is_seeded_and_cycles_each_task() -> None:
    assert len(_sampler("uniform", None)) == 90 + 10  # default epoch: every task's batches once
    first = list(_sampler("uniform", 200, seed=1))
    assert list(_sampler("uniform", 200, seed=1)) == first
    assert list(_sampler("uniform", 200, seed=2)) != first
    next_epoch = _sampler("uniform", 200, seed=1)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != first
    assert all(len({name for name, _ in batch}) == 1 for batch in first)  # one task per batch
    # ~100 draws of the small task's 10 batches: each pass covers its 40 rows, in a new order
    small = [[i for _, i in batch] for batch in first if batch[0][0] == "small"]
    passes = [sorted(sum(small[k : k + 10], [])) for k in range(0, 30, 10)]
    assert passes == [list(range(40))] * 3 and small[:10] != small[10:20]


def _capture(tmp_path_factory: pytest.TempPathFactory, adapters: str, run: Any) -> dict[str, Any]:
    """Run a joint training with ``run(out)`` and keep each in-memory (backbone, adapter, head, card) it saves."""
    saved: dict[str, dict[str, Any]] = {}
    epochs: list[int] = []
    real_save, real_set_epoch = ecomnlp.multitask.save_artifact, TaskSampler.set_epoch

    def spy(out, backbone, adapter, head, card):
        saved[Path(out).name] = {"backbone": backbone, "adapter": adapter, "head": head, "card": card}
        return real_save(out, backbone, adapter, head, card)

    def set_epoch(sampler: TaskSampler, epoch: int) -> None:
        epochs.append(epoch)
        real_set_epoch(sampler, epoch)

    out = tmp_path_factory.mktemp(f"joint_{adapters}") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ecomnlp.multitask, "save_artifact", spy)
        mp.setattr(TaskSampler, "set_epoch", set_epoch)
        summary = run(out)
    return {"adapters": adapters, "out": out, "saved": saved, "epochs": epochs, "summary": summary}


@pytest.fixture(scope="module")
def per_task(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> dict[str, Any]:
    """Per-task adapters, proportional sampler, through the Python API."""
    from ecomnlp.config import DataConfig, TaskSpec, TrainerSettings

    tasks = {name: TaskSpec(task, DataConfig(train=str(sentiment_csv), columns=columns, batch_size=8))
             for name, (task, columns) in TASKS.items()}
    return _capture(tmp_path_factory, "per_task", lambda out: ecomnlp.train_multitask(
        tasks, str(tiny_encoder), str(out), trainer=TrainerSettings(**TRAINER)))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> dict[str, Any]:
    """One shared adapter, uniform sampler, through ``ecomnlp train-multitask --config``."""
    from ecomnlp.cli import main

    def run(out: Path) -> None:
        config = out.parent / "multitask.yaml"
        config.write_text(yaml.safe_dump({
            "model": str(tiny_encoder), "out": str(out), "adapters": "shared", "sampler": "uniform",
            "tasks": {name: {"task": task, "data": {"train": str(sentiment_csv), "columns": columns, "batch_size": 8}}
                      for name, (task, columns) in TASKS.items()},
            "trainer": TRAINER,
        }), encoding="utf-8")
        main(["train-multitask", "--config", str(config)])

    return _capture(tmp_path_factory, "shared", run)


@pytest.fixture(params=["per_task", "shared"])
def joint(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(request.param)


def test_one_ordinary_task_directory_per_task(joint: dict[str, Any]) -> None:
    out = joint["out"]
    assert sorted(p.name for p in out.iterdir()) == ["category", "sentiment"]
    assert sorted(p.name for p in out.parent.iterdir() if p.is_dir()) == ["runs", "runs.train"]  # no temp dirs
    for name, (task, columns) in TASKS.items():
        assert sorted(p.name for p in (out / name).iterdir()) == ARTIFACT_FILES
        card = json.loads((out / name / "card.json").read_text(encoding="utf-8"))
        assert card["task"] == task and card["columns"] == columns and card["format_version"] == 1
        assert set(card["metrics"]["valid"]) >= {"accuracy", "f1_macro", "examples"}
        assert card["training"]["steps"] == 4 * 12  # 4 epochs of 6 + 6 batches (44 rows each, batch 8)
        assert joint["epochs"] == [0, 1, 2, 3]  # each epoch draws a new task order
        other = "category" if name == "sentiment" else "sentiment"
        mode = card["multitask"]
        assert mode["name"] == name and mode["others"] == {other: {"task": TASKS[other][0], "path": str(out / other)}}
        assert mode["adapters"] == joint["adapters"]
        assert mode["sampler"] == ("uniform" if joint["adapters"] == "shared" else "proportional")
        assert mode["probabilities"] == {"sentiment": 0.5, "category": 0.5} and mode["monitor"] == "val/mean"


def test_each_task_loads_alone_and_predicts_the_joint_logits(joint: dict[str, Any]) -> None:
    out, saved = joint["out"], joint["saved"]
    expected = {}
    for name in TASKS:
        memory = saved[name]
        ids = tokenize(memory["backbone"].tokenizer, [TEXTS], memory["card"]["max_length"])
        expected[name] = predict_logits(memory["backbone"], memory["adapter"], memory["head"], ids, 4)
        model = ecomnlp.load(out / name)
        assert model.backbone is not memory["backbone"] and model.task.name == TASKS[name][0]
        assert torch.allclose(model.logits(TEXTS, batch_size=5), expected[name], atol=1e-6, rtol=0)
    both = ecomnlp.load_many({name: out / name for name in TASKS})  # and side by side on one base
    for name in TASKS:
        assert torch.allclose(both[name].logits(TEXTS), expected[name], atol=1e-6, rtol=0)


def test_per_task_mode_trains_two_adapters(per_task: dict[str, Any]) -> None:
    out = per_task["out"]
    weights = {name: load_file(str(out / name / "adapter_model.safetensors")) for name in TASKS}
    assert weights["sentiment"].keys() == weights["category"].keys()
    assert any(not torch.equal(weights["sentiment"][k], weights["category"][k]) for k in weights["sentiment"])
    for name, tensors in weights.items():  # LoRA B starts at zero: non-zero means the adapter trained
        assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k), name
    best = per_task["saved"]["sentiment"]["card"]["training"]["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    for name in TASKS:  # the checkpoint holds every adapter and head, not just the last active one
        assert any(f".{name}.weight" in k and "lora_B" in k for k in state), name
        assert any(k.startswith(f"heads.{name}.") for k in state), name


def test_shared_mode_copies_one_adapter_into_each_directory(shared: dict[str, Any]) -> None:
    out = shared["out"]
    assert {memory["adapter"] for memory in shared["saved"].values()} == {"shared"}
    sentiment, category = (load_file(str(out / name / "adapter_model.safetensors")) for name in TASKS)
    assert sentiment.keys() == category.keys() and all(torch.equal(sentiment[k], category[k]) for k in sentiment)
    assert any(t.abs().sum() > 0 for k, t in sentiment.items() if "lora_B" in k)
    heads = [load_file(str(out / name / "head.safetensors")) for name in TASKS]
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_validation_logs_each_task_and_their_mean(per_task: dict[str, Any]) -> None:
    import csv

    metrics = next((per_task["out"].parent / "runs.train" / "logs").glob("version_*/metrics.csv"))
    with metrics.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["val/mean"]]
    assert len(rows) == 4  # one validation per epoch
    assert {"val/sentiment/accuracy", "val/category/accuracy", "val/sentiment/loss"} <= set(rows[0])
    with metrics.open(encoding="utf-8") as f:
        assert sum(bool(r["train/sentiment/loss"]) for r in csv.DictReader(f)) == 4  # per task: epoch means
    for row in rows:  # both classification tasks monitor accuracy
        mean = (float(row["val/sentiment/accuracy"]) + float(row["val/category/accuracy"])) / 2
        assert float(row["val/mean"]) == pytest.approx(mean, abs=1e-6)


def test_bad_task_names_are_refused_before_loading(tmp_path: Path) -> None:
    from ecomnlp.config import DataConfig, TaskSpec

    with pytest.raises(ValueError, match="task name 'a/b'"):
        ecomnlp.train_multitask({"a/b": TaskSpec("review_sentiment", DataConfig())}, "no-such-model", str(tmp_path))


@pytest.mark.parametrize("config", MULTITASK_CONFIGS, ids=lambda p: p.name)
def test_multitask_configs_parse_with_the_multitask_parser(config: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomnlp.cli import main
    from ecomnlp.models import _registry
    from ecomnlp.task import build_task

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["train-multitask", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert set(parsed["tasks"]) == set(yaml.safe_load(config.read_text(encoding="utf-8"))["tasks"])
    for spec in parsed["tasks"].values():
        build_task(spec["task"], spec["task_options"])  # a registered task with valid options
        assert spec["data"]["train"] and spec["data"]["columns"]
    assert parsed["model"] in _registry() and parsed["out"]


def test_the_shipped_multitask_config_exists() -> None:
    assert ROOT / "configs" / "multitask.yaml" in MULTITASK_CONFIGS


def test_help_is_fast_and_imports_no_torch() -> None:
    code = ("import sys\nfrom ecomnlp.cli import main\n"
            "try:\n    main(['train-multitask', '--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'transformers', 'peft') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "HEAVY []" in result.stdout, result.stderr[-2000:]
    for word in ("--tasks", "--adapters", "--sampler", "--temperature", "--steps_per_epoch", "--trainer.max_steps"):
        assert word in result.stdout
