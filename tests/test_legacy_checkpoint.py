"""A checkpoint written before the restructuring (issue 14) still loads and predicts identically.

``tests/fixtures/legacy_checkpoint/`` holds a tiny FusionUNet checkpoint trained by
segfuse at commit bcd4d27 (one auxiliary, ``flair`` at scale 2 × 2 × 2, modality
dropout 0.3; written by ``train``'s own save path), one synthetic case (an oblique
LPS primary, the FLAIR on its own grid) and the label maps and probability maps that
code predicted for it, with and without the FLAIR (``make_fixture.py`` made them).

Label maps must be identical (values, dtype, grid). Probabilities are compared
with ``atol=1e-6, rtol=1e-5``: the same float32 operations on the CPU, where a
different thread count may change the order of a reduction, and nothing more.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfuse.inference.case import case_from_paths, predict_case
from segfuse.inference.model import load_model
from segfuse.io.checkpoint import load_checkpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_checkpoint"


def test_legacy_checkpoint_loads_with_its_config_and_weights():
    state = load_checkpoint(FIXTURE / "checkpoint.pt")  # weights_only=True, content hashes checked
    model = load_model(FIXTURE / "checkpoint.pt")
    assert list(model.cfg.data.aux) == ["flair"]
    assert list(model.cfg.data.aux["flair"].scale) == [2, 2, 2]
    assert model.cfg.data.aux["flair"].dropout == 0.3
    assert model.allow_missing_aux
    saved, loaded = state["config"]["data"]["aux"], model.cfg.to_dict()["data"]["aux"]
    assert {name: {k: loaded[name][k] for k in spec} for name, spec in saved.items()} == saved
    # keys added since this checkpoint take the values that reproduce its behaviour
    assert {k for k in loaded["flair"] if k not in saved["flair"]} <= {"level_blocks"}
    assert model.cfg.data.aux["flair"].level_blocks == 0 and model.cfg.model.aux_slice == "containing"
    own = model.net.state_dict()
    assert sorted(own) == sorted(state["model"])
    assert all(torch.equal(own[k], state["model"][k]) for k in own)


@pytest.mark.parametrize(("tag", "drop_aux"), [("with_flair", ()), ("without_flair", ("flair",))])
def test_legacy_checkpoint_predicts_as_before(tmp_path, tag, drop_aux):
    case = case_from_paths(FIXTURE / "case" / "t1.nii.gz", {"flair": FIXTURE / "case" / "flair.nii.gz"}, "case")
    result = predict_case(
        FIXTURE / "checkpoint.pt", case, tmp_path / "seg.nii.gz", save_probabilities=True, drop_aux=drop_aux
    )
    expected = nib.load(str(FIXTURE / f"expected_label_{tag}.nii.gz"))
    written = nib.load(str(result.label_path))
    assert written.get_data_dtype() == expected.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_array_equal(written.affine, expected.affine)
    probabilities = np.asarray(nib.load(str(result.probabilities_path)).dataobj, dtype=np.float32)
    torch.testing.assert_close(
        torch.from_numpy(probabilities),
        torch.from_numpy(np.load(FIXTURE / f"expected_probabilities_{tag}.npy")),
        atol=1e-6,
        rtol=1e-5,
    )
    assert result.missing_aux == list(drop_aux)
