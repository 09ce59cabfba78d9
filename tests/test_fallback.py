"""segfuse predict --fallback: a case lacking an auxiliary goes to the model trained without it.

The choice rule is checked on in-memory models with two auxiliaries; the batch and
CLI paths on tiny random checkpoints, where a case's probabilities must be exactly
those its chosen model gives when run alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import SCALE, random_checkpoint, write_case, write_manifest

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.data.cases import Case, ImageRef
from segfuse.factory import build_model
from segfuse.inference.case import case_from_paths, predict_case
from segfuse.inference.fallback import ModelChoice
from segfuse.inference.model import LoadedModel, model_from_config
from segfuse.inference.predict import MANIFEST_NAME, predict
from segfuse.io.errors import SegfuseInputError


def _model(aux: dict[str, float], labels: dict[int, str] | None = None) -> LoadedModel:
    """An in-memory tiny 3D model reading ``aux`` (name → modality dropout)."""
    cfg = config_from_dict(
        {
            "data": {
                "aux": {name: {"scale": list(SCALE), "dropout": p} for name, p in aux.items()},
                "labels": labels or {0: "background", 1: "foreground"},
            },
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 8]},
        }
    )
    return model_from_config(cfg, build_model(cfg))


def _case(*aux: str) -> Case:
    return Case("c", ImageRef(Path("t1.nii.gz")), {name: ImageRef(Path(f"{name}.nii.gz")) for name in aux})


def test_the_model_reading_most_of_what_the_case_has_is_chosen() -> None:
    main_model, t2_only, t1_only = _model({"flair": 0, "t2": 0}), _model({"t2": 0}), _model({})
    choice = ModelChoice.of(main_model, [t1_only, t2_only])
    for has, expected in [
        (("flair", "t2"), main_model),
        (("t2",), t2_only),
        (("flair",), t1_only),  # no FLAIR-only model: T1 alone, and the FLAIR is not handed to it
        ((), t1_only),
    ]:
        chosen, case, drop = choice.for_case(_case(*has))
        assert chosen is expected, has
        assert set(case.aux) == set(has) & set(chosen.preprocessing.aux_scales)
        assert drop == frozenset()
    # drop_aux is applied before choosing: the full case without its FLAIR goes to the T2 model
    chosen, case, _ = choice.for_case(_case("flair", "t2"), drop_aux={"flair"})
    assert chosen is t2_only and set(case.aux) == {"t2"}


def test_a_dedicated_model_beats_the_dropout_path_only_on_a_tie() -> None:
    dropout_main, t1_only = _model({"flair": 0.3, "t2": 0.3}), _model({})
    choice = ModelChoice.of(dropout_main, [t1_only])
    chosen, case, _ = choice.for_case(_case("t2"))
    assert chosen is dropout_main and set(case.aux) == {"t2"}  # reads the T2: more than T1 alone
    chosen, case, _ = choice.for_case(_case())
    assert chosen is t1_only  # both read nothing: the model trained for it wins


def test_without_fallbacks_nothing_changes() -> None:
    model = _model({"flair": 0})
    case = _case()
    assert ModelChoice.of(model).for_case(case, drop_aux={"flair"}) == (model, case, frozenset({"flair"}))


def test_a_case_no_model_can_take_stays_with_the_main_model() -> None:
    main_model, t2_only = _model({"flair": 0, "t2": 0}), _model({"t2": 0})
    case = _case("flair")
    assert ModelChoice.of(main_model, [t2_only]).for_case(case)[0] is main_model  # predict_case refuses it


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        ([_model({}, {0: "background", 1: "tumour"})], r"labels \(data.labels\) differ"),
        ([_model({"pet": 0})], r"reads auxiliary \['pet'\].*main model's inputs"),
        ([_model({"flair": 0, "t2": 0})], r"same auxiliaries.*never be chosen"),
        ([_model({"t2": 0}), _model({"t2": 0})], r"both read \['t2'\]"),
    ],
    ids=["labels", "unknown-aux", "same-aux", "duplicate"],
)
def test_fallbacks_that_cannot_stand_in_are_refused(fallbacks, message) -> None:
    with pytest.raises(SegfuseInputError, match=message):
        ModelChoice.of(_model({"flair": 0, "t2": 0}), fallbacks)


def test_refuses_an_auxiliary_the_main_model_does_not_read() -> None:
    choice = ModelChoice.of(_model({"flair": 0}), [_model({})])
    with pytest.raises(SegfuseInputError, match=r"case 'c': auxiliary \['pet'\] is not an input"):
        choice.for_case(_case("pet"))
    with pytest.raises(SegfuseInputError, match=r"drop_aux names \['t2'\]"):
        choice.for_case(_case("flair"), drop_aux={"t2"})


# -- batch and CLI, on checkpoints ---------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        "full": random_checkpoint(folder / "full.pt"),
        "t1_only": random_checkpoint(folder / "t1_only.pt", aux=False, seed=1),
    }


def _without_flair(manifest: Path, case_id: str) -> None:
    lines = manifest.read_text().splitlines()
    lines = [",".join([*line.split(",")[:2], ""]) if line.startswith(f"{case_id},") else line for line in lines]
    manifest.write_text("\n".join(lines) + "\n")


def _probabilities(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_sends_each_case_to_its_model(checkpoints, tmp_path: Path, workers: int) -> None:
    manifest = write_manifest(tmp_path / "data", ["a", "b"])
    _without_flair(manifest, "b")
    out = tmp_path / "out"
    result = predict(checkpoints["full"], manifest, out, save_probabilities=True, progress=False, workers=workers,
                     fallbacks=[checkpoints["t1_only"]])
    assert result.ok, result.summary()
    record = json.loads((out / MANIFEST_NAME).read_text())
    assert record["cases"]["a"]["model"] == [str(checkpoints["full"])]
    assert record["cases"]["b"]["model"] == [str(checkpoints["t1_only"])]
    assert record["fallbacks"] == [[str(checkpoints["t1_only"])]]

    scans = tmp_path / "data" / "scans"
    alone = {
        "a": predict_case(
            checkpoints["full"],
            case_from_paths(scans / "a_t1.nii.gz", {"flair": scans / "a_flair.nii.gz"}),
            tmp_path / "a.nii.gz",
            save_probabilities=True,
        ),
        "b": predict_case(checkpoints["t1_only"], case_from_paths(scans / "b_t1.nii.gz"), tmp_path / "b.nii.gz",
                          save_probabilities=True),
    }
    for case_id, single in alone.items():
        np.testing.assert_array_equal(
            _probabilities(out / "probabilities" / f"{case_id}.nii.gz"), _probabilities(single.probabilities_path)
        )
        header = nib.load(out / f"{case_id}.nii.gz")  # on the case's own grid, whichever model wrote it
        np.testing.assert_allclose(header.affine, nib.load(scans / f"{case_id}_t1.nii.gz").affine)


def test_resume_predicts_again_when_the_fallbacks_change(checkpoints, tmp_path: Path, caplog) -> None:
    manifest = write_manifest(tmp_path / "data", ["a"])
    out = tmp_path / "out"
    predict(checkpoints["full"], manifest, out, progress=False, fallbacks=[checkpoints["t1_only"]])
    again = predict(checkpoints["full"], manifest, out, progress=False, resume=True,
                    fallbacks=[checkpoints["t1_only"]])
    assert again.skipped == ["a"]
    alone = predict(checkpoints["full"], manifest, out, progress=False, resume=True)
    assert alone.skipped == [] and [r.case_id for r in alone.succeeded] == ["a"]
    assert "recorded with another checkpoint" in caplog.text


def test_cli_fallback_for_one_case(checkpoints, tmp_path: Path, capsys) -> None:
    t1, _ = write_case(tmp_path, "c0", 0)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "--checkpoint", str(checkpoints["full"]), "--image", str(t1), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 2
    assert "--fallback" in capsys.readouterr().err
    assert not out.exists()
    assert main(["predict", "--checkpoint", str(checkpoints["full"]), "--fallback", str(checkpoints["t1_only"]),
                 "--image", str(t1), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert f"predicting with the fallback {checkpoints['t1_only']}" in capsys.readouterr().out
    assert out.is_file()
    assert main(["predict", "--checkpoint", str(checkpoints["full"]), "--fallback", str(checkpoints["full"]),
                 "--image", str(t1), "--out", str(tmp_path / "x.nii.gz"), "--device", "cpu"]) == 2
    assert "never be chosen" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["fallback", "ensemble member"])
def test_cli_image_output_never_replaces_a_checkpoint_it_was_given(checkpoints, tmp_path: Path, role: str,
                                                                   capsys) -> None:
    """Also a checkpoint that predicts nothing for this case (an unused fallback) or an ensemble's member."""
    t1, flair = write_case(tmp_path, "c0", 0)
    named_like_a_scan = tmp_path / "model.nii.gz"  # an odd name, but a checkpoint all the same
    source = checkpoints["t1_only"] if role == "fallback" else checkpoints["full"]
    named_like_a_scan.write_bytes(source.read_bytes())
    before = named_like_a_scan.read_bytes()
    given = ["--fallback" if role == "fallback" else "--checkpoint", str(named_like_a_scan)]
    code = main(["predict", "--checkpoint", str(checkpoints["full"]), *given, "--image", str(t1),
                 "--aux", f"flair={flair}", "--out", str(named_like_a_scan), "--device", "cpu", "--no-progress"])
    assert code == 2
    assert "replace an input" in capsys.readouterr().err
    assert named_like_a_scan.read_bytes() == before
