"""The command line: fast help, listing commands, YAML configs, and the train/evaluate scripts (also under DDP)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import sentiment_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
RAW = {p: yaml.safe_load(p.read_text(encoding="utf-8")) or {} for p in ALL_CONFIGS}
SUITES = [p for p in ALL_CONFIGS if isinstance(RAW[p].get("tasks"), list)]
# `train` configs; joint runs (tasks: {name: ...}): test_multitask.py; train-chat: test_support_chat.py;
# train-fraud: test_fraud_detection.py
CONFIGS = [p for p in ALL_CONFIGS if "task" in RAW[p]]
ARTIFACT_FILES = ["adapter_config.json", "adapter_model.safetensors", "card.json", "head.safetensors"]


def _run(args: list[str], timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _ecomnlp() -> list[str]:
    script = Path(sys.executable).parent / "ecomnlp"  # the console script from pyproject's [project.scripts]
    return [str(script)] if script.exists() else [sys.executable, "-m", "ecomnlp.cli"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--help"], ["train", "evaluate", "predict", "models", "tasks", "add-lexical", "serve"]),
        (["train", "--help"], ["--data.columns", "--trainer.max_steps", "--task_options", "--lora.r", "--config"]),
        (["evaluate", "--help"], ["--model", "--data", "--out", "--on_bad_row"]),
        (["predict", "--help"], ["--model", "--text"]),
        (["add-lexical", "--help"], ["--source", "--data.train", "--data.valid", "--out"]),
    ],
)
def test_help_is_fast_and_imports_no_torch(argv: list[str], expected: list[str]) -> None:
    code = (
        "import sys\n"
        "from ecomnlp.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'transformers', 'peft', 'datasets') if m in sys.modules))\n"
    )
    result = _run([sys.executable, "-c", code], timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout[-500:]
    for word in expected:
        assert word in result.stdout


def test_models_command_lists_named_models() -> None:
    from ecomnlp.models import _registry

    out = _run([*_ecomnlp(), "models"], timeout=60).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(_registry()) <= set(lines) and "minilm-l6" in lines
    assert all(("ready" in line) or ("not provisioned" in line) for line in lines.values())


def test_tasks_command_lists_tasks() -> None:
    out = _run([*_ecomnlp(), "tasks"], timeout=60).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert {"product_classification", "review_sentiment"} <= set(names)
    assert "category" in out and "star rating" in out  # first line of each task's docstring
    from ecomnlp.cli import COMMANDS, OWN_COMMAND_TASKS

    assert set(OWN_COMMAND_TASKS) <= set(names)  # with the command that trains each
    assert {command for command, _ in OWN_COMMAND_TASKS.values()} <= set(COMMANDS)


def _print_config(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    from ecomnlp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS or [pytest.param(None, marks=pytest.mark.skip("no configs/*.yaml yet"))],
                         ids=lambda p: p.name if p else "none")
def test_every_config_parses_with_the_train_parser(config: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomnlp.models import _registry
    from ecomnlp.task import build_task

    monkeypatch.chdir(ROOT)
    parsed = _print_config(config, capsys)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert parsed["task"] == raw["task"]
    build_task(parsed["task"], parsed["task_options"])  # a registered task with valid options
    assert parsed["model"] in _registry() or Path(parsed["model"]).is_dir()
    assert parsed["out"]


def test_readme_train_config_example_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's annotated train config is a real one (the train parser takes it) and shows the shipped settings."""
    fence = "`" * 3
    blocks = (ROOT / "README.md").read_text(encoding="utf-8").split(fence + "yaml\n")[1:]
    example = next(b.split(fence)[0] for b in blocks if b.startswith("task: product_classification"))
    config = tmp_path / "readme.yaml"
    config.write_text(example, encoding="utf-8")
    monkeypatch.chdir(ROOT)
    parsed = _print_config(config, capsys)
    raw = yaml.safe_load(example)
    for key in ("task", "model", "lexical", "base_dropout"):
        assert parsed[key] == raw[key]
    assert {k: parsed["lora"][k] for k in raw["lora"]} == raw["lora"]
    assert {k: parsed["trainer"][k] for k in raw["trainer"]} == raw["trainer"]
    shipped = yaml.safe_load((ROOT / "configs" / "product_classification.yaml").read_text(encoding="utf-8"))
    for key in ("task", "model", "lora", "base_dropout", "lexical"):  # the example shows the shipped settings
        assert raw[key] == shipped[key], key


def _readme_commands() -> list[list[str]]:
    """The ``ecomnlp ...`` command lines of the README's bash blocks (continuations joined, comments cut), except
    those that show optional arguments in brackets or read a config that only an earlier command writes."""
    import shlex

    fence = "`" * 3
    commands = []
    for block in (ROOT / "README.md").read_text(encoding="utf-8").split(fence + "bash\n")[1:]:
        for line in block.split(fence)[0].replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            config = words[words.index("--config") + 1] if "--config" in words else None
            if words[:1] == ["ecomnlp"] and " [--" not in line and (config is None or (ROOT / config).exists()):
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("command", _readme_commands(), ids=lambda c: " ".join(c)[:60])
def test_readme_commands_parse(command: list[str], capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command line the README shows is accepted by the command line (parsed, not run)."""
    from ecomnlp.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_every_suite_config_names_models_and_test_files(suite: Path) -> None:
    spec = yaml.safe_load(suite.read_text(encoding="utf-8"))
    assert spec["tasks"] and all({"name", "model", "data"} <= set(entry) for entry in spec["tasks"])
    assert len({entry["name"] for entry in spec["tasks"]}) == len(spec["tasks"])


def test_config_typo_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The config check above can fail: an unknown key stops the parser."""
    from ecomnlp.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: review_sentiment\nout: x\ndata: {train: t.csv}\ntrainer: {max_epoch: 2}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None)
    assert "max_epoch" in capsys.readouterr().err


FRAUD_FEATURES = {"numeric": {"Amount": {"log": True}, "V1": {}}, "categorical": {"country": {}}}


@pytest.mark.parametrize("overrides, features", [
    (["--features.numeric.V2", "{}"], {"numeric": {"Amount": {"log": True}, "V1": {}, "V2": {}},
                                       "categorical": {"country": {}}}),
    (["--features.numeric.Amount={log: false, buckets: 8}"], {"numeric": {"Amount": {"log": False, "buckets": 8},
                                                                          "V1": {}}, "categorical": {"country": {}}}),
    (["--features.categorical.country.min_count", "3"], {"numeric": FRAUD_FEATURES["numeric"],
                                                         "categorical": {"country": {"min_count": 3}}}),
    (["--features.numeric", "{V9: {}}"], {"numeric": {"V9": {}}, "categorical": {"country": {}}}),
    (["--features", "{numeric: {X: {}}}", "--features.numeric.V2", "{}"], {"numeric": {"X": {}, "V2": {}}}),
    (["--features.numeric.V2", "{}", "--features.categorical", "{}"], {"numeric": {"Amount": {"log": True}, "V1": {},
                                                                                  "V2": {}}, "categorical": {}}),
], ids=["add-a-column", "equals-form", "deep-key", "one-level-replaces-that-level", "after-a-whole-dict",
        "then-another-key"])
def test_override_inside_a_dict_keeps_its_other_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     overrides: list[str], features: dict) -> None:
    """jsonargparse alone would keep only the first level: ``--features.numeric.V2 {}`` left V2 as the only
    numeric column. The Python API and the command line merge the same way; other overrides are untouched."""
    from ecomnlp.cli import command_arguments, main, train_fraud_command

    config = tmp_path / "fraud.yaml"
    config.write_text(yaml.safe_dump({"out": "runs/x", "data": {"train": "t.csv", "label": "Class"},
                                      "features": FRAUD_FEATURES, "network": {"trees": 0.5}}))
    args = command_arguments(train_fraud_command, str(config), [*overrides, "--network.members", "3"])
    assert args["features"] == features
    assert (args["network"].members, args["network"].trees) == (3, 0.5)
    with pytest.raises(SystemExit) as exit_info:
        main(["train-fraud", "--config", str(config), *overrides, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["features"] == features


def _tiny_config(tmp_path: Path, tiny_encoder: Path) -> tuple[Path, Path, Path]:
    data = write_csv(tmp_path / "reviews.csv", ["review", "label"], [r[:2] for r in sentiment_rows()])
    out = tmp_path / "runs" / "sentiment"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "task": "review_sentiment",
        "model": str(tiny_encoder),
        "out": str(out),
        "data": {"train": str(data), "columns": {"text": "review"}, "batch_size": 8, "eval_batch_size": 8},
        "lora": {"r": 4, "alpha": 8},
        "trainer": {"max_epochs": 1, "lr": 1e-2, "progress_bar": False, "accelerator": "cpu", "devices": 1,
                    "log_every_n_steps": 1},
    }))
    return config, data, out


def _check_artifact(out: Path, steps: int) -> dict:
    assert sorted(p.name for p in out.iterdir()) == ARTIFACT_FILES
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".train"]  # one artifact, no temp
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["task"] == "review_sentiment" and card["training"]["steps"] == steps
    assert card["lora"]["r"] == 4
    return card


def test_train_and_evaluate_scripts(tmp_path: Path, tiny_encoder: Path) -> None:
    config, data, out = _tiny_config(tmp_path, tiny_encoder)
    result = _run([sys.executable, "scripts/train.py", "--config", str(config), "--trainer.max_steps", "2"])
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 2 and summary["out"] == str(out)
    assert set(summary["metrics"]["valid"]) == {"accuracy", "f1_macro", "examples"}
    _check_artifact(out, steps=2)

    report = tmp_path / "report"
    result = _run([sys.executable, "scripts/evaluate.py", "--model", str(out), "--data", str(data), "--out", str(report)])
    assert f"{report}/metrics.json" in result.stdout
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["examples"] == 48 and 0 <= metrics["accuracy"] <= 1 and set(metrics["per_class"]) == {"0", "1"}
    assert (report / "confusion_matrix.png").is_file()

    result = _run([*_ecomnlp(), "predict", "--model", str(out), "--text", "[great coffee, 酒店早餐很难吃]"])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and all(r["label"] in ("0", "1") for r in rows)


@pytest.mark.ddp
def test_ddp_two_cpu_processes_train_one_artifact(tmp_path: Path, tiny_encoder: Path) -> None:
    """DDP on CPU (gloo): both ranks train, only rank 0 scores, prints and saves; no hang."""
    config, _, out = _tiny_config(tmp_path, tiny_encoder)
    result = _run([sys.executable, "scripts/train.py", "--config", str(config), "--trainer.strategy", "ddp",
                   "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_steps", "2"], timeout=180)
    assert "Starting with 2 processes" in result.stderr
    assert result.stdout.count('"metrics"') == 1  # one summary, from rank 0
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 2
    _check_artifact(out, steps=2)
