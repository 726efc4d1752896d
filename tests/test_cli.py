"""Tests of the ``dflows`` command line."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dflows
from dflows.cli import main

torch.set_num_threads(1)

QUICK = ["--grid", "12", "--layers", "2", "--steps", "5", "--restarts", "1", "--quiet", "--device", "cpu"]


@pytest.fixture
def model_file(tmp_path, capsys):
    path = tmp_path / "ring.dflow"
    assert main(["train", "--target", "ring8", "--out", str(path), *QUICK]) == 0
    capsys.readouterr()
    return path


def run_main(capsys, arguments):
    """Run the command in-process; return its exit status, standard output and error."""
    try:
        status = main(arguments)
    except SystemExit as exit:
        status = exit.code
    output = capsys.readouterr()
    return status, output.out, output.err


def test_targets_lists_every_preset(capsys):
    status, out, _ = run_main(capsys, ["targets"])

    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == list(dflows.PRESETS)


def test_train_writes_model_and_summary(capsys, tmp_path):
    path = tmp_path / "out.dflow"

    status, out, _ = run_main(capsys, ["train", "--target", "ring8", "--out", str(path), *QUICK])

    assert status == 0
    assert path.exists()
    assert len(out.strip().splitlines()) == 1
    for word in ("NLL", "entropy", "KL", "steps/s"):
        assert word in out


def test_train_options_reach_model(capsys, tmp_path):
    path = tmp_path / "affine.dflow"
    arguments = ["train", "--target", "moons", "--out", str(path), "--layer-type", "affine", "--seed", "3", *QUICK]

    status, _, _ = run_main(capsys, arguments)
    model = dflows.load(path)

    assert status == 0
    assert model.config.layer_type == "affine"
    assert model.config.vocab_size == 12
    assert model.config.layers == 2
    assert model.train_config["seed"] == 3


def test_train_gradient_mlp(capsys, tmp_path):
    path = tmp_path / "mlp.dflow"
    arguments = [
        "train", "--target", "gaussian", "--out", str(path), "--conditioner", "mlp", "--hidden", "8",
        "--grid", "10", "--steps", "3", "--quiet", "--device", "cpu",
    ]

    status, _, _ = run_main(capsys, arguments)

    assert status == 0
    assert dflows.load(path).train_config["method"] == "gradient"


def test_train_from_npy(capsys, tmp_path):
    source = tmp_path / "target.npy"
    weights = np.zeros((10, 10))
    weights[2:5, 6:9] = 1.0
    np.save(source, weights)
    path = tmp_path / "painted.dflow"

    status, _, _ = run_main(capsys, ["train", "--target", str(source), "--out", str(path), "--steps", "3", "--quiet"])

    assert status == 0
    assert np.allclose(dflows.load(path).target, weights / weights.sum())


def test_eval_text(capsys, model_file):
    status, out, _ = run_main(capsys, ["eval", str(model_file)])

    assert status == 0
    for word in ("NLL", "entropy", "KL", "nats", "bits", "12 x 12"):
        assert word in out


def test_eval_json_fields(capsys, model_file):
    status, out, _ = run_main(capsys, ["eval", str(model_file), "--json"])
    record = json.loads(out)
    metrics = dflows.evaluate(dflows.load(model_file))

    assert status == 0
    assert record["grid"] == 12
    assert record["layers"] == 2
    assert record["nll_nats"] == pytest.approx(metrics.nll)
    assert record["entropy_nats"] == pytest.approx(metrics.entropy)
    assert record["kl_nats"] == pytest.approx(metrics.kl)
    assert record["nll_bits"] == pytest.approx(metrics.nll_bits)


def test_eval_other_target(capsys, model_file):
    status, out, _ = run_main(capsys, ["eval", str(model_file), "--target", "uniform", "--json"])

    assert status == 0
    assert json.loads(out)["entropy_nats"] == pytest.approx(np.log(144))


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_sample_writes_rows(capsys, model_file, tmp_path, suffix):
    path = tmp_path / f"samples{suffix}"

    status, _, _ = run_main(capsys, ["sample", str(model_file), "-n", "50", "--out", str(path)])

    assert status == 0
    if suffix == ".npy":
        samples = np.load(path)
    else:
        with open(path) as file:
            rows = list(csv.reader(file))
        assert rows[0] == ["row", "col"]
        samples = np.array(rows[1:], dtype=np.int64)
    assert samples.shape == (50, 2)
    assert samples.min() >= 0
    assert samples.max() < 12


def test_sample_seed_reproducible(capsys, model_file, tmp_path):
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"

    run_main(capsys, ["sample", str(model_file), "-n", "30", "--out", str(first), "--seed", "4"])
    run_main(capsys, ["sample", str(model_file), "-n", "30", "--out", str(second), "--seed", "4"])

    assert np.array_equal(np.load(first), np.load(second))


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["train", "--out", "x.dflow"], "--target"),
        (["train", "--target", "ring8", "--out", "x.dflow", "--layers", "0"], "layers=0"),
        (["train", "--target", "ring8", "--out", "x.dflow", "--grid", "300"], "K=300"),
        (["train", "--target", "ring8", "--out", "x.dflow", "--lr", "abc"], "invalid number"),
        (["train", "--target", "nothere", "--out", "x.dflow"], "'nothere'"),
        (["train", "--target", "ring8", "--out", "x.txt"], ".dflow"),
        (["train", "--target", "ring8", "--out", "x.dflow", "--device", "cuda:7"], "cuda:7"),
        (["train", "--target", "ring8", "--out", "x.dflow", "--method", "search", "--conditioner", "mlp"], "--method search"),
        (["sample", "m.dflow", "-n", "5", "--out", "s.txt"], ".npy or .csv"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_invalid_arguments_exit_2(capsys, tmp_path, monkeypatch, arguments, fragment):
    monkeypatch.chdir(tmp_path)

    status, _, err = run_main(capsys, arguments)

    assert status == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"not a model", b"PK\x03\x04truncated"])
def test_bad_model_file_message(capsys, tmp_path, content):
    path = tmp_path / "bad.dflow"
    path.write_bytes(content)

    status, _, err = run_main(capsys, ["eval", str(path)])

    assert status == 2
    assert str(path) in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_console_script_runs(tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-m", "dflows.cli", "targets"],
        capture_output=True, text=True, env=environment, timeout=120,
    )

    assert result.returncode == 0
    assert "ring8" in result.stdout


def test_console_script_usage_error_status(tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-m", "dflows.cli", "train", "--target", "ring8"],
        capture_output=True, text=True, env=environment, timeout=120,
    )

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
