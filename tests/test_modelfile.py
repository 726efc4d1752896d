"""Tests of dflows.modelfile: exact save/load round trips, bad files and atomic writes."""

import os
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest
import torch

import dflows
from dflows import modelfile
from dflows.config import FlowConfig, TrainConfig
from dflows.modelfile import FORMAT_VERSION, ModelFileError, load, model_to_dict, save
from dflows.targets import preset
from dflows.trainer import Trainer, create_flow

torch.set_num_threads(1)

SIZE = 8


@pytest.fixture
def trained_model():
    """Return a small affine flow trained for 3 steps, so it has a target and a history."""
    flow = create_flow(FlowConfig(vocab_size=SIZE, layers=3, layer_type="affine"), seed=1)
    settings = TrainConfig(method="gradient", steps=3, lr=0.1, device="cpu")
    trainer = Trainer(flow, preset("gaussian", SIZE), settings)
    trainer.run(steps=3)
    return flow


@pytest.fixture
def saved_file(trained_model, tmp_path):
    return save(trained_model, tmp_path / "model.dflow")


def load_problem(path):
    """Return the ModelFileError message of loading ``path``, less its ``"{path}: "`` prefix.

    Checks run on the rest only, because the file name itself (the test's tmp_path) may
    contain words such as "truncated".
    """
    with pytest.raises(ModelFileError) as caught:
        load(path)
    message = str(caught.value)
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    return message[len(prefix) :]


def record_data_offsets(path):
    """Return ``(name, offset)`` of the data of every tensor record in a torch archive."""
    data = path.read_bytes()
    offsets = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            # The local header is 30 bytes, then the name and the extra field (torch pads
            # the extra field to align the data), whose lengths are at bytes 26 and 28.
            name_length, extra_length = struct.unpack(
                "<HH", data[info.header_offset + 26 : info.header_offset + 30]
            )
            offsets.append((info.filename, info.header_offset + 30 + name_length + extra_length))
    return offsets


class CodeRunningPayload:
    """A pickled object whose unpickling creates ``marker``, to show that code would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# Round trips.


def test_round_trip_log_probs_identical(trained_model, saved_file):
    cells = trained_model.grid_cells()

    loaded = load(saved_file)

    assert torch.equal(loaded.log_prob(cells), trained_model.log_prob(cells))
    assert torch.equal(loaded.forward(cells), trained_model.forward(cells))


def test_round_trip_weights_identical(trained_model, saved_file):
    loaded = load(saved_file)
    original = trained_model.state_dict()

    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_round_trip_config(trained_model, saved_file):
    loaded = load(saved_file)

    assert loaded.config == trained_model.config
    assert loaded.train_config == trained_model.train_config


def test_round_trip_target(trained_model, saved_file):
    loaded = load(saved_file)

    assert loaded.target.dtype == np.float64
    assert np.array_equal(loaded.target, trained_model.target)


def test_round_trip_history(trained_model, saved_file):
    loaded = load(saved_file)

    assert loaded.history == trained_model.history
    assert loaded.history["step"] == [1, 2, 3]
    assert all(isinstance(step, int) for step in loaded.history["eval_step"])


def test_round_trip_untrained_model(tmp_path):
    flow = create_flow(FlowConfig(vocab_size=5, layers=2), seed=2)
    path = save(flow, tmp_path / "fresh.dflow")

    loaded = load(path)

    assert loaded.target is None
    assert loaded.history == {}
    assert loaded.train_config is None
    assert torch.equal(loaded.log_prob(flow.grid_cells()), flow.log_prob(flow.grid_cells()))


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
def test_round_trip_more_variables(tmp_path, conditioner):
    config = FlowConfig(vocab_size=6, num_variables=4, layers=4, conditioner=conditioner, init_std=3.0)
    flow = create_flow(config, seed=3)
    points = torch.randint(0, 6, (100, 4), generator=torch.Generator().manual_seed(0))

    loaded = load(save(flow, tmp_path / "four.dflow"))

    assert torch.equal(loaded.forward(points), flow.forward(points))


def test_load_maps_to_cpu_in_eval_mode(saved_file):
    loaded = load(saved_file)

    assert loaded.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert not loaded.training


def test_load_reads_with_weights_only_on_cpu(saved_file, monkeypatch):
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load(saved_file)

    assert len(calls) == 1
    assert calls[0].get("weights_only") is True
    assert calls[0].get("map_location") == "cpu"


def test_public_api_save_and_load(trained_model, tmp_path):
    path = dflows.save(trained_model, tmp_path / "public.dflow")

    assert path == tmp_path / "public.dflow"
    assert dflows.load(path).config == trained_model.config


def test_save_accepts_string_path(trained_model, tmp_path):
    path = save(trained_model, str(tmp_path / "text.dflow"))

    assert load(str(path)).config == trained_model.config


def test_save_replaces_existing_file(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    other = create_flow(FlowConfig(vocab_size=4, layers=1), seed=0)
    save(other, path)

    save(trained_model, path)

    assert load(path).config == trained_model.config


def test_training_resumes_after_load(saved_file):
    loaded = load(saved_file)
    trainer = Trainer(loaded, loaded.target, TrainConfig.from_dict(loaded.train_config))

    trainer.step()

    assert loaded.history["step"] == [1, 2, 3, 4]


# Bad files.


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.dflow"

    assert load_problem(path) == "file not found"


def test_load_folder(tmp_path):
    assert load_problem(tmp_path) == "is a folder, not a model file"


def test_load_random_bytes(tmp_path):
    path = tmp_path / "noise.dflow"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())

    assert load_problem(path) == "not a dflows model file (it is not a torch archive)"


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.dflow"
    path.write_bytes(b"")

    assert "not a dflows model file" in load_problem(path)


def test_load_foreign_zip(tmp_path):
    path = tmp_path / "notes.dflow"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    assert "not a dflows model file" in load_problem(path)


def test_load_foreign_zip_names_file(tmp_path):
    path = tmp_path / "notes.dflow"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    with pytest.raises(ModelFileError, match=f"^{re.escape(str(path))}: "):
        load(path)


def test_load_torch_file_with_other_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3), "format": "something-else"}, path)

    assert load_problem(path) == "not a dflows model file (no 'dflows-model' header)"


def test_load_bare_state_dict(trained_model, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(trained_model.state_dict(), path)

    assert "no 'dflows-model' header" in load_problem(path)


def test_load_torch_file_with_tensor(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), path)

    assert "no 'dflows-model' header" in load_problem(path)


def test_payload_runs_when_unpickled(tmp_path):
    # Unpickling the payload without restrictions does create its marker, so the two tests
    # below would notice if loading a model file ran it.
    marker = tmp_path / "ran.txt"

    pickle.loads(pickle.dumps(CodeRunningPayload(marker)))

    assert marker.exists()


def test_load_torch_file_with_object(trained_model, tmp_path):
    path = tmp_path / "object.dflow"
    marker = tmp_path / "ran.txt"
    data = model_to_dict(trained_model)
    data["train_config"] = CodeRunningPayload(marker)
    torch.save(data, path)

    message = load_problem(path)

    assert not marker.exists()
    assert "contains Python objects, which are never loaded" in message


def test_load_plain_pickle_with_object(tmp_path):
    path = tmp_path / "object.dflow"
    marker = tmp_path / "ran.txt"
    path.write_bytes(pickle.dumps({"format": "dflows-model", "payload": CodeRunningPayload(marker)}))

    message = load_problem(path)

    assert not marker.exists()
    assert "not a dflows model file" in message


def test_load_truncated_file_raises(saved_file):
    data = saved_file.read_bytes()
    saved_file.write_bytes(data[: len(data) // 2])

    with pytest.raises(ModelFileError, match=f"^{re.escape(str(saved_file))}: "):
        load(saved_file)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_load_truncated_file_message(saved_file, fraction):
    data = saved_file.read_bytes()
    saved_file.write_bytes(data[: int(len(data) * fraction)])

    assert "truncated" in load_problem(saved_file)


def test_load_corrupted_tensor_bytes(saved_file):
    original = saved_file.read_bytes()
    offsets = record_data_offsets(saved_file)

    assert len(offsets) >= 5
    for name, offset in offsets:
        damaged = bytearray(original)
        damaged[offset + 1] ^= 0x40
        saved_file.write_bytes(bytes(damaged))
        problem = load_problem(saved_file)
        assert problem == "the model file is corrupt (its checksum does not match)", name


def test_load_missing_checksum(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    del data["checksum"]
    torch.save(data, path)

    assert "checksum does not match" in load_problem(path)


def test_load_edited_weights(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["state_dict"]["base.logits"][0, 0] += 1.0
    torch.save(data, path)

    assert "checksum does not match" in load_problem(path)


def test_load_newer_format_version(trained_model, tmp_path):
    path = tmp_path / "future.dflow"
    data = model_to_dict(trained_model)
    data["format_version"] = FORMAT_VERSION + 1
    torch.save(data, path)

    message = load_problem(path)

    assert message.startswith("written by a newer dflows")
    assert f"format version {FORMAT_VERSION + 1}" in message


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.0])
def test_load_invalid_format_version(trained_model, tmp_path, version):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["format_version"] = version
    torch.save(data, path)

    assert load_problem(path) == f"invalid format version {version!r}"


def test_load_invalid_flow_config(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["flow_config"]["layer_type"] = "rotate"
    data["checksum"] = modelfile._checksum(data)
    torch.save(data, path)

    message = load_problem(path)

    assert message.startswith("damaged model settings")
    assert "layer_type 'rotate' is unknown" in message


def test_load_config_weights_mismatch(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["flow_config"]["layers"] = 2
    data["checksum"] = modelfile._checksum(data)
    torch.save(data, path)

    assert load_problem(path).startswith("weights do not match the settings")


def test_load_missing_entry(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    del data["flow_config"]
    torch.save(data, path)

    assert load_problem(path) == "damaged model file, entry 'flow_config' is missing"


def test_load_target_of_wrong_size(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["target"] = torch.from_numpy(preset("uniform", SIZE + 1))
    # The checksum is recomputed so that the size check, not the checksum, rejects the file.
    data["checksum"] = modelfile._checksum(data)
    torch.save(data, path)

    assert "stored target is 9 x 9 but the model has K=8" in load_problem(path)


def test_load_invalid_target(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    data = model_to_dict(trained_model)
    data["target"] = -torch.from_numpy(preset("uniform", SIZE))
    data["checksum"] = modelfile._checksum(data)
    torch.save(data, path)

    message = load_problem(path)

    assert message.startswith("damaged target")
    assert "negative" in message


# Atomic writes.


def fail_with(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize("function", ["replace", "fsync"])
def test_failed_write_keeps_previous_file(trained_model, tmp_path, monkeypatch, function):
    path = tmp_path / "model.dflow"
    other = create_flow(FlowConfig(vocab_size=4, layers=1), seed=0)
    save(other, path)
    previous = path.read_bytes()

    monkeypatch.setattr(os, function, fail_with(OSError(28, "No space left on device")))
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: writing failed (No space left on device)")):
        save(trained_model, path)
    monkeypatch.undo()

    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dflow"]
    assert load(path).config == other.config


def test_failed_first_write_leaves_nothing(trained_model, tmp_path, monkeypatch):
    path = tmp_path / "model.dflow"

    monkeypatch.setattr(os, "replace", fail_with(OSError(13, "Permission denied")))
    with pytest.raises(ModelFileError, match="writing failed"):
        save(trained_model, path)

    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_temporary(trained_model, tmp_path, monkeypatch):
    path = tmp_path / "model.dflow"
    save(trained_model, path)
    previous = path.read_bytes()

    monkeypatch.setattr(os, "fsync", fail_with(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save(trained_model, path)
    monkeypatch.undo()

    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dflow"]


def test_save_into_missing_folder(trained_model, tmp_path):
    path = tmp_path / "absent" / "model.dflow"

    with pytest.raises(ModelFileError, match=re.escape(f"{path}: cannot write here")):
        save(trained_model, path)


def test_saved_file_mode_follows_umask(trained_model, tmp_path):
    path = tmp_path / "model.dflow"
    previous_umask = os.umask(0o022)
    try:
        save(trained_model, path)
    finally:
        os.umask(previous_umask)

    assert path.stat().st_mode & 0o777 == 0o644
