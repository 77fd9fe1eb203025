"""The checkpoint schema: one builder for the model part, one for the training part, read back as written."""

import collections
import math
import pickle

import pytest
import torch
from testkit import TINY_ARCH, TINY_SIZE

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.checkpoint import (TrainingState, load_checkpoint, model_from_checkpoint,
                                     model_state, recorded_data_root, recorded_split, save_checkpoint)
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.models import build_model


def _training_state(model, **overrides) -> TrainingState:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    values = dict(optimizer=optimizer.state_dict(), scheduler={"last_epoch": 7}, scaler={}, epoch=2, step=7,
                  best_metric=0.5, best_metric_name="miou", metrics={"miou": 0.5}, rng={}, config={"data": "/data/set"},
                  split={"train": ["a", "b"], "val": ["c"]})
    values.update(overrides)
    return TrainingState(**values)


def test_model_and_training_parts_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_ARCH).eval()
    state = {**model_state(model, TINY_ARCH, TINY_SIZE), **_training_state(model).to_dict()}
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c.pt", state), num_classes=len(CLASS_NAMES))

    assert ckpt["aux_loss"] is False and ckpt["input_size"] == list(TINY_SIZE)
    info = ModelInfo.from_checkpoint(ckpt)
    assert info.class_names == list(CLASS_NAMES) and info.palette == [list(c) for c in PALETTE]
    assert info.mean == list(IMAGENET_MEAN) and info.input_size == TINY_SIZE
    rebuilt = model_from_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key

    training = TrainingState.from_checkpoint(ckpt)
    assert (training.epoch, training.step, training.best_metric, training.epoch_progress) == (2, 7, 0.5, None)
    assert training.split == {"train": ["a", "b"], "val": ["c"]} and training.config == {"data": "/data/set"}
    assert "epoch_progress" not in ckpt  # an end-of-epoch save has no partial epoch at all
    assert recorded_split(ckpt, "val") == ["c"] and str(recorded_data_root(ckpt)) == "/data/set"


def test_a_relative_data_folder_of_an_older_version_is_read_where_train_ran(tmp_path, monkeypatch):
    # Before 2026-12-07 `train --data data --out run` recorded both as typed: eval, export and parity run in another
    # folder read *its* data/ (every copy of a data set has the same image IDs), silently
    project, elsewhere = tmp_path.resolve() / "project", tmp_path.resolve() / "elsewhere"
    (project / "data").mkdir(parents=True)
    (elsewhere / "data").mkdir(parents=True)
    ckpt = {"path": str(project / "runs/train/exp/weights/best.pt"), "config": {"data": "data", "out": "runs/train/exp"}}
    monkeypatch.chdir(elsewhere)
    assert recorded_data_root(ckpt, required=True) == project / "data"
    ckpt["path"], ckpt["config"]["out"] = str(project / "weights/best.pt"), "."  # `train --out .` in the project
    assert recorded_data_root(ckpt, required=True) == project / "data"
    ckpt["config"]["out"] = str(project / "runs/train/exp")  # a resumed run's (absolute): where it began is unknown
    assert str(recorded_data_root(ckpt)) == "data"


@pytest.mark.parametrize("fields, says", [
    ({"config": [1]}, r"its config \[1\] records no data and out folders as text"),
    ({"config": {"data": 5}}, r"its config \{'data': 5\} records no data and out folders as text"),
    ({"config": {"data": "d", "out": 5}}, r"its config \{'data': 'd', 'out': 5\} records no data and out folders as text"),
    ({"split": [1]}, r"its split \[1\] is not lists of image IDs"),
    ({"split": {"val": 5}}, r"its split \{'val': 5\} is not lists of image IDs"),
    ({"split": {"val": "abc"}}, r"its split \{'val': 'abc'\} is not lists of image IDs"),  # was read as IDs a, b, c
])
def test_an_edited_split_or_data_folder_is_one_line_not_a_traceback(fields, says):
    # eval, export's parity images and --resume read these: an AttributeError or TypeError traceback before
    ckpt = {"path": "c.pt", "config": {"data": "d"}, "split": {"val": ["a"]}, **fields}
    with pytest.raises(DronsegError, match=f"checkpoint c.pt: {says}: the checkpoint was edited or damaged"):
        recorded_split(ckpt, "val") if "split" in fields else recorded_data_root(ckpt)


@pytest.mark.parametrize("edit, says", [
    ({"epoch": "abc"}, "ValueError: invalid literal for int() with base 10: 'abc'"),
    ({"scheduler": None}, "KeyError: 'scheduler'"),
    ({"metrics": [1]}, "TypeError: cannot convert dictionary update sequence element #0 to a sequence"),
])
def test_an_edited_training_state_is_one_line_not_a_traceback(edit, says, tmp_path):
    # train --resume of it: a ValueError, KeyError or TypeError traceback
    model = build_model(TINY_ARCH).eval()
    ckpt = {**model_state(model, TINY_ARCH, TINY_SIZE), **_training_state(model).to_dict(), "path": "c.pt", **edit}
    ckpt = {k: v for k, v in ckpt.items() if v is not None}
    with pytest.raises(DronsegError) as caught:
        TrainingState.from_checkpoint(ckpt)
    assert str(caught.value) == f"checkpoint c.pt: its training state cannot be read ({says}): the checkpoint was edited or " \
                                "damaged: use one written by `dronseg-edge train`"


def test_mid_epoch_progress_is_kept():
    model = build_model(TINY_ARCH)
    progress = {"batches": 6, "steps": 2, "loss_sum": 1.5, "images": 24}
    assert _training_state(model, epoch_progress=progress).to_dict()["epoch_progress"] == progress


def test_aux_flag_follows_the_model():
    with_aux = build_model("deeplabv3_mobilenet_v3_large", aux_loss=True)
    assert model_state(with_aux, "deeplabv3_mobilenet_v3_large", TINY_SIZE)["aux_loss"] is True
    assert model_state(build_model(TINY_ARCH, aux_loss=True), TINY_ARCH, TINY_SIZE)["aux_loss"] is False  # no aux head


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_weights_stored_in_a_smaller_float_type_load_as_the_model_s(dtype, tiny_checkpoint, tmp_path):
    """float8 weights (a checkpoint cast down to shrink it) were a NotImplementedError traceback: no isfinite for them."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "small.pt")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "small.pt"))
    assert torch.equal(model.backbone["0"][0].weight, ckpt["model"]["backbone.0.0.weight"].float())


def test_model_only_checkpoint_has_no_training_state(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.raises(DronsegError, match="holds no training state: resume from weights/last.pt"):
        TrainingState.from_checkpoint(ckpt)
    assert recorded_split(ckpt, "val") == [] and recorded_data_root(ckpt) is None
    assert TrainingState.from_checkpoint({"optimizer": {}, "scheduler": {}, "config": {}, "epoch": 0,
                                          "step": 0}).best_metric == -math.inf


def _pickled_object(path):
    path.write_bytes(pickle.dumps(collections.Counter(a=1)))


def _pickled_module(path):
    torch.save(torch.nn.Linear(2, 2), path)


def _truncated(path):
    torch.save({"x": torch.zeros(4)}, path)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("write", [_pickled_object, _pickled_module, _truncated,
                                   lambda p: p.write_bytes(b"junk"), lambda p: p.write_text("a\nb\n")])
def test_files_that_are_not_checkpoints_give_one_plain_line(write, tmp_path):
    path = tmp_path / "other.pt"
    write(path)
    with pytest.raises(DronsegError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path} cannot be read (") and "\n" not in message
    # torch's weights_only refusal is a paragraph of advice (file an issue, add_safe_globals, ...): none of it
    assert "Please" not in message and "weights_only" not in message and "\x1b" not in message
    assert len(message) < 400


def test_a_file_without_the_tag_or_a_key_or_with_weights_of_another_model_is_one_line(tiny_checkpoint, tmp_path):
    from dronseg_edge.checkpoint import FORMAT

    path = tmp_path / "other.pt"
    for saved, message in (({"model": {}}, f"other.pt is not a dronseg-edge checkpoint \\(no '{FORMAT}' tag\\)"),
                           ({"format": FORMAT}, "checkpoint .*other.pt lacks 'model': it is damaged")):
        torch.save(saved, path)
        with pytest.raises(DronsegError, match=message):
            load_checkpoint(path)
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["model"] = {k: v for i, (k, v) in enumerate(ckpt["model"].items()) if i}  # its first layer lost
    with pytest.raises(DronsegError, match=f"checkpoint .* does not fit model {TINY_ARCH}: Error"):
        model_from_checkpoint(ckpt)


def test_a_folder_given_as_a_checkpoint_is_named_a_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(DronsegError, match=r"checkpoint .*weights is a folder, not a file: pass the file itself"):
        load_checkpoint(tmp_path / "weights")


def test_an_exported_file_given_as_a_checkpoint_is_named_so(tmp_path):
    # submit takes a .pt only (eval takes both): an .onnx was "damaged or not a checkpoint"
    (tmp_path / "best_fp32.onnx").write_bytes(b"\x08\x08")
    with pytest.raises(DronsegError, match=r"best_fp32.onnx is an exported model, not a training checkpoint: pass the "
                                           r"\.pt it was exported from"):
        load_checkpoint(tmp_path / "best_fp32.onnx")


def _edited(tiny_checkpoint, tmp_path, **fields):
    """A copy of the tiny checkpoint with metadata ``fields`` replaced (as a hand edit would)."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    if fields.get("model") == "nan":  # what a run whose loss went NaN saves: eval scored it, infer made all background
        fields = {"model": {**ckpt["model"], "backbone.0.0.weight": ckpt["model"]["backbone.0.0.weight"] * math.nan}}
    if fields.get("model") == "overlapping":  # one stored value viewed as 10^16 (stride 0): 14 GB at 2x10^9 values
        fields = {"model": {**ckpt["model"], "backbone.0.0.weight": torch.zeros(1).expand(10**8, 10**8)}}
    if fields.get("model") == "sparse":  # load_checkpoint: NotImplementedError "Cannot access storage of SparseTensorImpl"
        fields = {"model": {**ckpt["model"], "backbone.0.0.weight": ckpt["model"]["backbone.0.0.weight"].to_sparse()}}
    if fields.get("model") == "meta":  # a model built on the meta device: 'Tensor.item() cannot be called on meta tensors'
        fields = {"model": {**ckpt["model"], "backbone.0.0.weight": torch.empty(16, 3, 3, 3, device="meta")}}
    if fields.get("model") == "int name":  # infer: AttributeError "'int' object has no attribute 'startswith'"
        fields = {"model": {**ckpt["model"], 5: torch.zeros(2)}}
    ckpt.update(fields)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("fields, says", [
    ({"palette": [[300, -5, "x"]] * 12}, "metadata palette[0][0] 300 is outside 0..255"),
    ({"input_size": [100000, 100000]}, "metadata input_size[0] 100000 is outside 1..16384"),
    ({"std": [0, 0, 0]}, "metadata std[0] 0 is outside 0.001..10"),
    ({"class_names": ["a", "b", "c"], "palette": [[1, 2, 3]] * 3}, "metadata class_names has 3 names but the model's "
                                                                     "classifier has 12 output channels"),
    ({"class_names": [str(i) for i in range(12)], "model": {}}, "holds no classifier weights"),
    ({"model": "nan"}, "weight backbone.0.0.weight holds NaN or Inf (the training diverged)"),
    ({"model": "overlapping"}, "weight backbone.0.0.weight declares 10000000000000000 values but stores 4 bytes"),
    ({"model": "sparse"}, "weight 'backbone.0.0.weight' is not a dense tensor under a text name"),
    ({"model": "int name"}, "weight 5 is not a dense tensor under a text name"),
    ({"model": "meta"}, "weight backbone.0.0.weight is a meta tensor, which holds no values"),
])
def test_edited_checkpoint_metadata_is_refused_with_one_line(fields, says, tiny_checkpoint, tmp_path):
    path = _edited(tiny_checkpoint, tmp_path, **fields)
    with pytest.raises(DronsegError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path}") and says in message and "\n" not in message, message
    assert caught.value.exit_code == 2


def test_a_checkpoint_whose_arch_nests_100000_deep_is_one_line(tiny_checkpoint, monkeypatch):
    from dronseg_edge import checkpoint

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    monkeypatch.setattr(checkpoint, "torch_load", lambda *a: {**torch.load(tiny_checkpoint, weights_only=True), "arch": deep})
    with pytest.raises(DronsegError, match=r"is for model \[\[\[\[\[\[\[\.\.\.\]\]\]\]\]\]\], which this version does not know"):
        load_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("version, release", [("2.14.1+cu130", (2, 14, 1)), ("2.5.0a0+872d972e41.nv24.08", (2, 5, 0)),
                                              ("2.10.0rc3", (2, 10, 0)), ("2.11.0.dev20260101+cpu", (2, 11, 0))])
def test_torch_release_reads_field_version_strings(version, release):
    from dronseg_edge.torch_floor import torch_release

    assert torch_release(version) == release


@pytest.mark.parametrize("version", ["2.5.1", "2.9.1+cu128", "2.5.0a0+872d972e41.nv24.08"])
def test_an_older_torch_refuses_to_unpickle_anything(version, tiny_checkpoint, tmp_path, monkeypatch):
    """weights_only=True is bypassable before 2.10 (GHSA-53q9-r3pm-6pq6, GHSA-63cw-57p8-fm3p): one line, before reading."""
    from dronseg_edge.models import read_weights_file

    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on an unsafe torch"))
    for load, what in ((load_checkpoint, f"checkpoint {tiny_checkpoint}"), (read_weights_file, f"--weights {tiny_checkpoint}")):
        with pytest.raises(DronsegError) as caught:
            load(tiny_checkpoint)
        message = str(caught.value)
        assert message.startswith(f"torch {version} cannot load {what} safely") and "install torch >= 2.10" in message
        assert "GHSA-63cw-57p8-fm3p" in message and "\n" not in message and caught.value.exit_code == 2


@pytest.mark.parametrize("text, cause", [
    # torch 2.6 .. 2.13: the cause after "WeightsUnpickler error:", itself ending in advice
    ("Weights only load failed. This file can still be loaded, to do so you have two options, do those steps only if "
     "you trust the source of the checkpoint. \n\t(1) In PyTorch 2.6, we changed the default value of the `weights_only` "
     "argument in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
     "likely succeed, but it can result in arbitrary code execution.\n\t(2) Alternatively, to load with `weights_only=True` "
     "please check the recommended steps in the following error message.\n\tWeightsUnpickler error: Unsupported global: "
     "GLOBAL subprocess.call was not an allowed global by default. Please use `torch.serialization.add_safe_globals("
     "[call])` or ... if you trust this class/function.\n\nCheck the documentation of torch.load to learn more",
     "Unsupported global: GLOBAL subprocess.call"),
    # torch 2.14: no marker, the cause a paragraph of its own
    ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
     "`torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely "
     "succeed, but it can result in arbitrary code execution. Do it only if you got the file from a trusted source.\n\n\n"
     "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation of "
     "torch.load to learn more about types accepted by default with weights_only https://pytorch.org/docs/stable/",
     "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."),
])
def test_a_weights_only_refusal_keeps_the_cause_and_drops_the_unsafe_advice(text, cause):
    import pickle as pickle_module

    from dronseg_edge.torch_floor import _short_reason

    assert _short_reason(pickle_module.UnpicklingError(text)) == f"it holds Python objects, not plain data: {cause}"
