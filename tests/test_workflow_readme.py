"""The README's "from your own data to a 5-fold ensemble" walk-through, run as written.

The commands are read from the README's code block (so the README cannot drift from
what works) and run through ``segfuse.cli.main`` in a temporary folder holding a tiny
synthetic nnU-Net raw dataset (``data/MyDataset``: T1 plus a 2 × 2 × 4 FLAIR at its
own resolution) and a labelled test set (``data/MyTest``). Only the scale changes:
2 folds instead of 5 (``data.folds=2``), a tiny network and 4 iterations.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segfuse.cli import main
from segfuse.io.geometry import aux_grid

REPO = Path(__file__).resolve().parents[1]
HEADING = "### From your own data to a 5-fold ensemble"
FOLDS = ["0", "1"]

pytestmark = pytest.mark.slow

TINY = [
    "data.folds=2",
    "data.aux.flair.features=4",
    "model.encoder_depth=3",
    "model.widen_factor=0.25",
    "model.stem_kernel=3",
    "model.norm=instance",
    "model.decoder_channels=[16, 8, 8]",
    "model.deep_supervision=false",
    "training.batch_size=2",
    "training.iterations=4",
    "training.iterations_per_epoch=2",
    "training.warmup_iterations=0",
    "training.max_minutes=null",
    "training.schedule=iterations",
    "training.num_threads=1",
    "training.device=cpu",
    "inference.overlap=0.25",
]
PATCH = {"3d": ["training.patch_size=[16, 16, 16]", "inference.roi_size=[16, 16, 16]"],
         "2d": ["training.patch_size=[16, 16]", "inference.roi_size=[16, 16]"]}


def write_nnunet_dataset(root: Path, n_cases: int, seed: int, shape=(24, 24, 16)) -> Path:
    """nnU-Net raw: ``imagesTr/<case>_0000`` (T1, LPS, 0.9 × 0.9 × 2 mm), ``_0001`` (FLAIR on the
    2 × 2 × 4 edge-aligned grid), ``labelsTr/<case>`` (a sphere), and ``dataset.json``."""
    rng = np.random.default_rng(seed)
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    aux_affine, aux_shape = aux_grid(affine, shape, (2, 2, 4))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        centre = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
        radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2 * np.array([1, 1, 4])[:, None, None, None]).sum(0))
        label = radius < 5
        t1 = 100 + 60 * label + rng.normal(0, 5, shape)
        flair = np.zeros(aux_shape, np.float32)
        blocks = (t1 + 80 * label)[: aux_shape[0] * 2, : aux_shape[1] * 2, : aux_shape[2] * 4]
        flair[:] = blocks.reshape(aux_shape[0], 2, aux_shape[1], 2, aux_shape[2], 4).mean(axis=(1, 3, 5))
        case = f"case_{seed}{i:02d}"
        nib.save(nib.Nifti1Image(t1.astype(np.float32), affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(flair, aux_affine), root / "imagesTr" / f"{case}_0001.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"{case}.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def readme_commands() -> list[list[str]]:
    """The walk-through's ``segfuse`` commands in order, ``for`` loops unrolled over :data:`FOLDS`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, "the README lost its walk-through"
    block = text.split(HEADING, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands: list[list[str]] = []
    loop: tuple[str, list[str]] | None = None
    body: list[list[str]] = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        head = re.match(r"^for (\w+) in ([\w ]+); do$", " ".join(words).replace(" ;", ";"))
        if head:
            assert head[2].split() == ["0", "1", "2", "3", "4"], "the walk-through trains 5 folds"
            loop = (head[1], FOLDS)
            continue
        if words == ["done"]:
            assert loop is not None
            var, values = loop
            commands += [[w.replace(f"${var}", v) for w in cmd] for v in values for cmd in body]
            loop, body = None, []
            continue
        assert words[0] == "segfuse", line
        (body if loop else commands).append(words[1:])
    return commands


def _scaled_down(args: list[str]) -> list[str]:
    """The same command, smaller: tiny networks and 2 folds for train; no progress bars."""
    verb = args[0]
    if verb == "train":
        config = Path(args[args.index("--config") + 1])
        mode = "2d" if "2d" in config.name else "3d"
        return [*args, *TINY, *PATCH[mode], "--no-progress"]
    if verb in ("plan", "predict", "cv-summary"):
        return [*args, "--no-progress"]
    return args


def test_readme_walkthrough_runs_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    write_nnunet_dataset(tmp_path / "data" / "MyDataset", n_cases=6, seed=1)
    write_nnunet_dataset(tmp_path / "data" / "MyTest", n_cases=2, seed=2)
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [c[0] for c in commands] == ["plan", "plan", "config", *["train"] * 4, "cv-summary", "predict", "evaluate"]
    for args in commands:
        code = main(_scaled_down(args))
        out = capsys.readouterr()
        assert code == 0, f"segfuse {shlex.join(args)} exited {code}: {out.err[-2000:]}"
        if args[0] == "config":
            assert out.out.startswith("ok: dataset")
        if args[0] == "cv-summary":
            assert re.search(r"best: MyDataset_[23]d \(mean Dice", out.out), out.out

    runs = tmp_path / "runs"
    for name in ("MyDataset_3d", "MyDataset_2d"):
        for fold in FOLDS:
            run = runs / name / f"fold_{fold}"
            splits = json.loads((run / "splits.json").read_text())
            assert len(splits) == 2 and sorted(splits[0]["val"] + splits[1]["val"]) == sorted(
                p.name[: -len(".nii.gz")] for p in (tmp_path / "data" / "MyDataset" / "labelsTr").iterdir()
            )
            own = sorted(p.name[: -len(".nii.gz")] for p in (run / "validation").glob("*.nii.gz"))
            assert own == splits[int(fold)]["val"]  # out-of-fold predictions made at the end of training
            log = (run / "train.log").read_text()
            assert "finished 4 iterations" in log and "INFO segfuse.train" in log

    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert {c["name"] for c in summary["configurations"]} == {"MyDataset_3d", "MyDataset_2d"}
    assert len(summary["cases"]) == 6 and summary["comparisons"][0]["n_cases"] == 6

    record = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert [Path(p).parent.name for p in record["checkpoints"]] == ["fold_0", "fold_1"]
    for case in ("case_200", "case_201"):
        pred = nib.load(tmp_path / "preds" / f"{case}.nii.gz")
        ref = nib.load(tmp_path / "data" / "MyTest" / "labelsTr" / f"{case}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    evaluation = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert evaluation["n_cases"] == 2 and 0.0 <= evaluation["mean_dice"] <= 1.0
