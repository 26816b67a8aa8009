"""Backbone weights: local files (safetensors / weights-only torch), random init by seed, offline errors,
and the refusal of other weights when a bank's extractor is rebuilt."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from patchbank.errors import WeightsError
from patchbank.features import create_extractor
from patchbank.features.rgb import RGBOptions, TimmBackbone
from patchbank.weights import WeightsRequest, load_weights, sha256_file

SMALL = {"backbone": "resnet18", "layers": [2, 3]}


@pytest.fixture(scope="module")
def full_state() -> dict[str, torch.Tensor]:
    """A full resnet18 state dict (with fc.*), as torchvision or timm would save it; random values, seed 7."""
    torch.manual_seed(7)
    return {k: v.clone() for k, v in timm.create_model("resnet18").state_dict().items()}


@pytest.fixture(scope="module")
def st_file(full_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file(full_state, str(path))
    return path


def test_safetensors_and_pt_give_the_same_extractor(
    st_file: Path, full_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    pt = tmp_path / "resnet18.pt"
    torch.save({"state_dict": full_state}, pt)
    a = create_extractor("rgb", SMALL, WeightsRequest.file(st_file))
    b = create_extractor("rgb", SMALL, WeightsRequest.file(pt))
    assert a.weights.kind == "file" and a.weights.file_sha256 == sha256_file(st_file)
    assert a.weights.params_sha256 == b.weights.params_sha256
    # the loaded tensors are the file's (before the extractor folds batch norms into convolutions)
    model, ident = load_weights(TimmBackbone(RGBOptions(**SMALL)), WeightsRequest.file(st_file))
    assert ident.params_sha256 == a.weights.params_sha256
    loaded = model.state_dict()["layer2.0.conv1.weight"]
    assert torch.equal(loaded, full_state["layer2.0.conv1.weight"])


def test_missing_keys_are_an_error(full_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    partial = {k: v for k, v in full_state.items() if not k.startswith("layer3.")}
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(WeightsError, match=r"lacks \d+ tensors .*layer3"):
        create_extractor("rgb", SMALL, WeightsRequest.file(path))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickled_object_is_never_executed(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # pragma: no cover - must never run
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(WeightsError, match="cannot read weights file"):
        create_extractor("rgb", SMALL, WeightsRequest.file(path))
    assert not (tmp_path / "pwned").exists()


def test_random_init_is_seeded() -> None:
    a = create_extractor("rgb", SMALL, WeightsRequest.random(5))
    b = create_extractor("rgb", SMALL, WeightsRequest.random(5))
    c = create_extractor("rgb", SMALL, WeightsRequest.random(6))
    assert a.weights.params_sha256 == b.weights.params_sha256 != c.weights.params_sha256


def test_offline_pretrained_fails_fast_with_instructions() -> None:
    with pytest.raises(WeightsError, match=r"--weights file:PATH.*--weights random"):
        create_extractor("rgb", SMALL)  # no network here, no hub cache: timm's pretrained loading fails


def test_rebuild_accepts_a_moved_file_and_refuses_other_weights(
    st_file: Path, full_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    built = create_extractor("rgb", SMALL, WeightsRequest.file(st_file))
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(st_file.read_bytes())
    again = create_extractor("rgb", SMALL, built.weights, weights_override=str(moved))
    rebuilt, original = again.model.state_dict(), built.model.state_dict()  # type: ignore[attr-defined]
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)

    other = dict(full_state)
    other["layer2.0.conv1.weight"] = other["layer2.0.conv1.weight"] + 1
    changed = tmp_path / "other.safetensors"
    save_file(other, str(changed))
    with pytest.raises(WeightsError, match="differs from the one the bank was built with"):
        create_extractor("rgb", SMALL, built.weights, weights_override=str(changed))


def test_recorded_file_missing_says_how_to_point_at_it(st_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gone.safetensors"
    copy.write_bytes(st_file.read_bytes())
    built = create_extractor("rgb", SMALL, WeightsRequest.file(copy))
    copy.unlink()
    with pytest.raises(WeightsError, match="is missing; pass --weights PATH"):
        create_extractor("rgb", SMALL, built.weights)
