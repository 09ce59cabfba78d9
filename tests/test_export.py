"""segfuse export: each format, run outside segfuse, gives the eager network's logits; the JSON says the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_checkpoint

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.export import EXPORT_FORMATS, METADATA_NAME, export_model
from segfuse.inference.model import load_model
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.errors import SegfuseInputError

pytestmark = [
    pytest.mark.slow,  # each export traces the network (seconds)
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),  # torch 2.14 deprecates torch.jit
]


@pytest.fixture(scope="module")
def ckpt_dropout(tmp_path_factory) -> Path:
    """A 3D model with a 2 x 2 x 4 auxiliary, trained (here: built) with modality dropout."""
    return random_checkpoint(tmp_path_factory.mktemp("export") / "model.pt", dropout=0.3)


@pytest.fixture(scope="module")
def exports(ckpt_dropout: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {fmt: export_model(ckpt_dropout, root / fmt, fmt=fmt).out_dir for fmt in EXPORT_FORMATS}


def _inputs(batch: int, spatial: tuple[int, int, int], seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *spatial, generator=gen)
    flair = torch.randn(batch, 1, spatial[0] // 2, spatial[1] // 2, spatial[2] // 4, generator=gen)
    return x, flair


def _eager(ckpt: Path, x: torch.Tensor, flair: torch.Tensor | None) -> np.ndarray:
    net = load_model(ckpt).net
    with torch.no_grad():
        return net(x, aux={"flair": flair}).numpy()


def _run(fmt: str, folder: Path, image: torch.Tensor, flair: torch.Tensor, present: torch.Tensor) -> np.ndarray:
    """Run the exported file with the format's own runtime (no segfuse code)."""
    path = folder / EXPORT_FORMATS[fmt]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"image": image.numpy(), "aux_flair": flair.numpy(), "present_flair": present.numpy()}
        return session.run(["logits"], feeds)[0]
    if fmt == "torchscript":
        return torch.jit.load(str(path))(image, flair, present).detach().numpy()
    return torch.export.load(str(path)).module()(image, flair, present).detach().numpy()


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
def test_exported_network_gives_the_eager_logits(fmt: str, exports: dict[str, Path], ckpt_dropout: Path) -> None:
    # TorchScript keeps the traced spatial shape (the 16 x 16 x 8 patch, rounded up to the
    # network's multiple of 8 and 2 blocks); the others take any multiple of it.
    spatial = (16, 16, 16) if fmt == "torchscript" else (24, 32, 16)
    x, flair = _inputs(3, spatial)
    got = _run(fmt, exports[fmt], x, flair, torch.ones(3))
    expected = _eager(ckpt_dropout, x, flair)
    assert got.shape == expected.shape == (3, 2, *spatial)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
def test_missing_auxiliary_through_the_present_mask(fmt: str, exports: dict[str, Path], ckpt_dropout: Path) -> None:
    x, flair = _inputs(2, (16, 16, 16), seed=4)
    present = torch.tensor([1.0, 0.0])
    got = _run(fmt, exports[fmt], x, flair * present.view(-1, 1, 1, 1, 1), present)
    with_flair = _eager(ckpt_dropout, x[:1], flair[:1])
    without = _eager(ckpt_dropout, x[1:], None)  # the eager network's missing-input path
    np.testing.assert_allclose(got[:1], with_flair, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1:], without, atol=1e-4, rtol=1e-4)
    assert np.abs(with_flair - _eager(ckpt_dropout, x[:1], None)).max() > 1e-4, "flair must matter"


def test_metadata_holds_what_prediction_needs(exports: dict[str, Path], ckpt_dropout: Path) -> None:
    meta = json.loads((exports["onnx"] / METADATA_NAME).read_text())
    assert meta["export_format"] == "onnx" and meta["model_file"] == "model.onnx"
    assert [i["name"] for i in meta["inputs"]] == ["image", "aux_flair", "present_flair"]
    assert meta["inputs"][1]["shape"] == ["batch", 1, "x/2", "y/2", "z/4"]
    assert meta["outputs"] == [{"name": "logits", "shape": ["batch", 2, "x", "y", "z"], "dtype": "float32"}]
    assert meta["network"]["min_spatial_shape"] == [16, 16, 16]
    assert meta["network"]["spatial_multiple"] == [8, 8, 8] and meta["network"]["allow_missing_aux"] is True
    pre = meta["preprocessing"]
    assert pre["orientation"] == "RAS" and pre["target_spacing"] is None
    assert pre["primary"]["normalisation"]["kind"] == "mr"
    assert [(a["name"], a["scale"]) for a in pre["aux"]] == [("flair", [2, 2, 4])]
    assert meta["labels"]["values"] == [0, 1] and meta["labels"]["names"] == {"0": "background", "1": "foreground"}
    assert meta["inference"]["patch_size"] == [16, 16, 8]
    assert meta["verification"]["checked"] and meta["verification"]["max_abs_difference"] < 1e-3
    assert isinstance(meta["onnx_opset"], int)
    ts = json.loads((exports["torchscript"] / METADATA_NAME).read_text())
    assert ts["network"]["dynamic_spatial"] is False and ts["inputs"][0]["shape"] == ["batch", 1, 16, 16, 16]
    assert not list(exports["onnx"].glob(".tmp-*"))


def test_2d_model_exports_with_context_slices(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "m2d.pt", mode="2d", context_slices=1)
    result = export_model(ckpt, tmp_path / "out", fmt="exported-program")
    meta = result.metadata
    assert meta["network"]["in_channels"] == 3 and meta["inputs"][1]["shape"] == ["batch", 1, "x/2", "y/2"]
    assert "z // scale[2]" in meta["inference"]["slicing"]
    assert [i["name"] for i in meta["inputs"]] == ["image", "aux_flair"]  # no dropout: no present mask
    x = torch.randn(2, 3, 24, 16)
    flair = torch.randn(2, 1, 12, 8)
    got = torch.export.load(str(result.model_path)).module()(x, flair).detach().numpy()
    with torch.no_grad():
        expected = load_model(ckpt).net(x, aux={"flair": flair}).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_bad_format_and_cli(ckpt_dropout: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SegfuseInputError, match=r"export format must be one of onnx, torchscript, exported-program"):
        export_model(ckpt_dropout, tmp_path / "x", fmt="tflite")
    code = main(["export", "--checkpoint", str(ckpt_dropout), "--format", "torchscript", "--out", str(tmp_path / "t")])
    assert code == 0
    out = capsys.readouterr().out
    assert "model.ts" in out and "checked" in out
    assert (tmp_path / "t" / "model.ts").is_file() and (tmp_path / "t" / METADATA_NAME).is_file()
    code = main(["export", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "u")])
    assert code == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_several_auxiliaries_at_their_own_shapes_through_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    cfg = config_from_dict(
        {
            "data": {
                "aux": {
                    "flair": {"scale": [2, 2, 4], "dropout": 0.2},
                    "dwi": {"scale": [2, 2, 2], "fusion": "gated", "mapper": "linear", "dropout": 0.2},
                },
                "labels": {0: "background", 1: "a", 2: "b"},
            },
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 16]},
        }
    )
    torch.manual_seed(0)
    net = build_model(cfg)
    ckpt = save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, tmp_path / "m.pt")
    result = export_model(ckpt, tmp_path / "out", fmt="onnx")
    names = ["image", "aux_flair", "aux_dwi", "present_flair", "present_dwi"]
    assert [i["name"] for i in result.metadata["inputs"]] == names
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 24, 16, 32, generator=gen)
    flair = torch.randn(2, 1, 12, 8, 8, generator=gen)
    dwi = torch.randn(2, 1, 12, 8, 16, generator=gen)
    present_dwi = torch.tensor([1.0, 0.0])
    feeds = {"image": x, "aux_flair": flair, "aux_dwi": dwi * present_dwi.view(-1, 1, 1, 1, 1),
             "present_flair": torch.ones(2), "present_dwi": present_dwi}  # fmt: skip
    got = session.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]
    model = load_model(ckpt).net
    with torch.no_grad():
        first = model(x[:1], aux={"flair": flair[:1], "dwi": dwi[:1]}).numpy()
        second = model(x[1:], aux={"flair": flair[1:], "dwi": None}).numpy()
    np.testing.assert_allclose(got, np.concatenate([first, second]), atol=1e-4, rtol=1e-4)


def test_onnx_without_its_packages_says_what_to_install(ckpt_dropout: Path, tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(SegfuseInputError, match=r"ONNX export needs .*onnxscript.*pip install 'segfuse\[export\]'"):
        export_model(ckpt_dropout, tmp_path / "o", fmt="onnx")
    assert not (tmp_path / "o" / "model.onnx").exists()
