"""The ``dflows`` command: list targets, train, evaluate and sample discrete flows."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from .config import ConfigError, FlowConfig, TrainConfig, recommended_configs
from .devices import DeviceError
from .modelfile import ModelFileError, load, save
from .targets import PRESETS, TargetError, load_target, validate_target

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """An argument is invalid. The message names it and what to use instead."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, with exit status 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 or more")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dflows",
        description="Train, evaluate and sample discrete normalizing flows on 2D grid targets.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    commands.add_parser("targets", help="list the preset targets")

    train = commands.add_parser(
        "train",
        help="train a flow on a target and save it",
        description="Train a flow on a target and save it. Every option but --target and --out "
        "defaults to the best settings known for the target.",
    )
    train.add_argument("--target", required=True, help="a preset name (see 'dflows targets'), a .npy file or an image")
    train.add_argument("--out", required=True, type=Path, help="model file to write (.dflow)")
    train.add_argument("--grid", type=_non_negative_int, help="grid size K (2 to 256); default: the target's own")
    train.add_argument("--layers", type=_non_negative_int, help="number of coupling layers")
    train.add_argument("--layer-type", choices=["shift", "affine"], help="shift (x + loc) or affine (scale * x + loc)")
    train.add_argument("--conditioner", choices=["table", "mlp"], help="lookup table or MLP on the kept variable")
    train.add_argument("--hidden", type=_non_negative_int, help="hidden width of the MLP conditioner")
    train.add_argument("--method", choices=["search", "gradient"], help="exact annealed search (tables only) or straight-through gradients")
    train.add_argument("--objective", choices=["exact", "sampled"], help="gradient method: exact expected NLL or sampled batches")
    train.add_argument(
        "--steps", type=_non_negative_int,
        help="sweeps (search) or optimiser steps (gradient); 0 trains until Ctrl+C, which saves the model",
    )
    train.add_argument("--batch", type=_non_negative_int, help="batch size of the sampled objective")
    train.add_argument("--lr", type=_number, help="Adam learning rate (gradient method)")
    train.add_argument("--temperature", type=_number, help="temperature at the first step")
    train.add_argument("--temperature-final", type=_number, help="temperature at the last step")
    train.add_argument("--restarts", type=_non_negative_int, help="coarse starts of the search")
    train.add_argument("--seed", type=_non_negative_int, help="random seed (default 0)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    train.add_argument("--threads", type=_non_negative_int, help="torch CPU threads (default 1)")
    train.add_argument("--quiet", action="store_true", help="print no progress bar")

    evaluate = commands.add_parser("eval", help="print the exact NLL, entropy and KL of a model")
    evaluate.add_argument("model", type=Path, help="model file (.dflow)")
    evaluate.add_argument("--target", help="evaluate on this target instead of the stored one")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    sample = commands.add_parser("sample", help="draw samples from a model")
    sample.add_argument("model", type=Path, help="model file (.dflow)")
    sample.add_argument("-n", type=_non_negative_int, required=True, help="number of samples")
    sample.add_argument("--out", type=Path, required=True, help="output file, .npy or .csv; rows are (row, col)")
    sample.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    return parser


# Commands.


def _command_targets(_: argparse.Namespace) -> int:
    width = max(len(name) for name in PRESETS)
    for name, spec in PRESETS.items():
        print(f"{name:<{width}}  {spec.description}")
    return 0


def _train_settings(args: argparse.Namespace, grid: int) -> tuple[FlowConfig, TrainConfig]:
    method = args.method or ("gradient" if args.conditioner == "mlp" else "search")
    if method == "search" and args.conditioner == "mlp":
        raise UsageError("--method search needs --conditioner table; use --method gradient for an MLP")
    preset = args.target if args.target in PRESETS else None
    flow, train = recommended_configs(preset, grid, method, args.conditioner or "table")
    flow_options = {
        "layers": args.layers,
        "layer_type": args.layer_type,
        "conditioner": args.conditioner,
        "hidden": args.hidden,
    }
    train_options = {
        "method": args.method,
        "objective": args.objective,
        "steps": args.steps,
        "batch_size": args.batch,
        "lr": args.lr,
        "temperature": args.temperature,
        "temperature_final": args.temperature_final,
        "restarts": args.restarts,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
    }
    for name, value in flow_options.items():
        if value is not None:
            setattr(flow, name, value)
    for name, value in train_options.items():
        if value is not None:
            setattr(train, name, value)
    try:
        flow.validate()
        train.validate()
    except ConfigError as error:
        raise UsageError(_option_names(str(error))) from None
    return flow, train


# Settings whose command-line option has another name than the field.
OPTION_NAMES = {"layer_type": "--layer-type", "batch_size": "--batch", "temperature_final": "--temperature-final"}


def _option_names(message: str) -> str:
    """Write a settings error in terms of the option the user typed, e.g. ``--lr=-1.0``."""
    field, separator, rest = message.partition("=")
    if not separator:
        field, separator, rest = message.partition(" ")
    if field.isidentifier():
        option = OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
        return f"{option}{separator}{rest}"
    return message


def _check_output(path: Path, option: str = "--out") -> None:
    """Raise ``UsageError`` before any work if ``path`` cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")


def _command_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer, create_flow

    if args.out.suffix != ".dflow":
        raise UsageError(f"--out {args.out}: the model file name must end in .dflow")
    _check_output(args.out)
    target = load_target(args.target, args.grid)
    flow_config, train_config = _train_settings(args, target.shape[0])
    model = create_flow(flow_config, train_config.seed)
    trainer = Trainer(model, target, train_config)

    total = trainer.total_steps
    if total == 0:
        print("dflows train: --steps 0 trains until you press Ctrl+C, which saves the model", file=sys.stderr)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=total or None, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.2)

    def progress(step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.4f} nats", refresh=False)

    interrupted = False
    try:
        result = trainer.run(progress=progress)
    except KeyboardInterrupt:
        interrupted = True
        trainer.finish()
        result = None
    finally:
        if bar is not None:
            bar.close()

    try:
        save(model, args.out)
    except ModelFileError as error:
        print(f"dflows train: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    metrics = trainer.evaluate()
    seconds = model.history["seconds"][-1] if model.history["seconds"] else 0.0
    rate = trainer.step_count / seconds if seconds > 0 else float("nan")
    print(
        f"{args.out}: NLL {metrics.nll:.4f} nats, entropy {metrics.entropy:.4f}, "
        f"KL {metrics.kl:.4f} ({metrics.kl_bits:.4f} bits), {trainer.step_count} steps "
        f"at {rate:.1f} steps/s on {trainer.device}"
    )
    if interrupted:
        print(f"dflows train: interrupted; saved the model at step {trainer.step_count}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.reason == "diverged":
        print(f"dflows train: {result.message}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _command_eval(args: argparse.Namespace) -> int:
    from .metrics import evaluate

    model = load(args.model)
    if args.target is not None:
        target = load_target(args.target, model.vocab_size)
    elif model.target is not None:
        target = model.target
    else:
        raise UsageError(f"{args.model} stores no target; pass one with --target")
    target = validate_target(target)
    if target.shape[0] != model.vocab_size:
        raise UsageError(f"target is {target.shape[0]} x {target.shape[0]} but the model has K={model.vocab_size}")

    metrics = evaluate(model, target)
    config = model.config
    steps = int(model.history["step"][-1]) if model.history.get("step") else 0
    if args.json:
        record = metrics.to_dict()
        record.update(
            grid=config.vocab_size,
            layers=config.layers,
            layer_type=config.layer_type,
            conditioner=config.conditioner,
            steps=steps,
            model=str(args.model),
        )
        print(json.dumps(record))
        return 0

    rows = [
        ("NLL", metrics.nll, metrics.nll_bits),
        ("entropy", metrics.entropy, metrics.entropy_bits),
        ("KL", metrics.kl, metrics.kl_bits),
        ("best factorized", metrics.best_factorized, metrics.best_factorized_bits),
    ]
    print(f"model            {args.model}")
    print(
        f"grid             {config.vocab_size} x {config.vocab_size}, {config.layers} "
        f"{config.layer_type} layers, {config.conditioner} conditioner, {steps} steps"
    )
    for name, nats, bits in rows:
        print(f"{name:<16} {nats:8.4f} nats  {bits:8.4f} bits")
    return 0


def _command_sample(args: argparse.Namespace) -> int:
    import torch

    suffix = args.out.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise UsageError(f"--out {args.out}: use a .npy or .csv file name")
    _check_output(args.out)
    model = load(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    samples = model.sample(args.n, generator=generator).cpu().numpy().astype(np.int64)
    if suffix == ".npy":
        np.save(args.out, samples, allow_pickle=False)
    else:
        with open(args.out, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["row", "col"])
            writer.writerows(samples.tolist())
    print(f"{args.out}: {args.n} samples from {args.model}")
    return 0


COMMANDS = {
    "targets": _command_targets,
    "train": _command_train,
    "eval": _command_eval,
    "sample": _command_sample,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``dflows`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"dflows {args.command}"
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, TargetError, DeviceError, ModelFileError) as error:
        # Every one of these names an argument (a value or an input file) that cannot be used.
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"{prefix}: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001
        # The command line prints every failure as one message; it never shows a traceback.
        print(f"{prefix}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
