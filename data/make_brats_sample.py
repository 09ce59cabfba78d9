"""Write the bundled BraTS demo sample, ``segfuse/sample/brats/``, from ``../shared/data``.

The sample is what ``segfuse demo`` trains on: 12 BraTS subjects (6 from
``brats18_t1_flair``, 6 from ``brats19_multimodal``) in the nnU-Net v2 raw layout,
each with

- ``imagesTr/<id>_0000.nii.gz``: the T1 (primary) at 2 × 2 × 2 mm, int16;
- ``imagesTr/<id>_0001.nii.gz``: the FLAIR at 4 × 4 × 8 mm, int16: a thick-slice
  acquisition made from the 1 mm FLAIR by
  :func:`segfuse.data.lowres.simulate_low_resolution` (Gaussian anti-aliasing matched
  to the target spacing, then resampling over the same field of view); on the T1's
  grid it is the edge-aligned auxiliary grid of scale 2 × 2 × 4;
- ``labelsTr/<id>.nii.gz``: the whole-tumour mask (every BraTS label > 0) at 2 mm,
  uint8: a 2 × 2 × 2 block of the 1 mm mask is tumour when at least half of it is.

Every subject is first cropped, at 1 mm, to the box of its non-zero T1, FLAIR and
label voxels, grown to a multiple of 8 mm on each axis (so the 2 mm T1 and the
4 × 4 × 8 mm FLAIR cover exactly the same field of view) and clipped to the
volume. Orientation stays as shipped (LPS). The 1 mm T1 is smoothed and resampled
to 2 mm by the same simulation (scale 2 × 2 × 2). The output is a function of the
source files only: running the script twice writes the same bytes.

Usage (from the repository root; the sample is committed, so only to remake it):

    python data/make_brats_sample.py                    # reads ../shared/data
    python data/make_brats_sample.py --data DIR --out segfuse/sample/brats
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from segfuse.io.geometry import aux_grid  # noqa: E402
from segfuse.io.image import Volume, read_image, write_image  # noqa: E402

PRIMARY_SCALE = (2, 2, 2)  # 1 mm -> 2 mm T1
FLAIR_SCALE = (4, 4, 8)  # 1 mm -> 4 x 4 x 8 mm FLAIR (2 x 2 x 4 over the 2 mm T1)
BOX_MULTIPLE = 8  # mm: the lcm of both scales, so both grids tile the crop exactly

# (source folder under the data root, subject id): 6 + 6 subjects, chosen to mix
# sites (CBICA, TCIA) and tumour sizes (22 to 212 thousand 1 mm voxels).
SUBJECTS = (
    ("brats18_t1_flair", "Brats18_CBICA_AAB_1"),
    ("brats18_t1_flair", "Brats18_CBICA_AQN_1"),
    ("brats18_t1_flair", "Brats18_CBICA_ASA_1"),
    ("brats18_t1_flair", "Brats18_CBICA_ASK_1"),
    ("brats18_t1_flair", "Brats18_TCIA02_471_1"),
    ("brats18_t1_flair", "Brats18_TCIA08_105_1"),
    ("brats19_multimodal", "BraTS19_CBICA_AAG_1"),
    ("brats19_multimodal", "BraTS19_CBICA_ABB_1"),
    ("brats19_multimodal", "BraTS19_TCIA01_131_1"),
    ("brats19_multimodal", "BraTS19_TCIA01_150_1"),
    ("brats19_multimodal", "BraTS19_TCIA01_186_1"),
    ("brats19_multimodal", "BraTS19_TCIA01_201_1"),
)

DATASET_JSON = {
    "name": "BraTS whole tumour, T1 2 mm + FLAIR 4x4x8 mm (segfuse demo sample)",
    "description": (
        "12 BraTS 2018/2019 training subjects, cropped to the brain, T1 at 2 mm, FLAIR at 4x4x8 mm "
        "(simulated thick-slice acquisition), whole-tumour labels. Channels have different grids: "
        "segfuse reads the FLAIR at its own resolution. Written by data/make_brats_sample.py."
    ),
    "reference": "BraTS 2018 and 2019 training data (Menze et al. 2015; Bakas et al. 2017, 2018)",
    "licence": "BraTS terms of use: research use, cite the BraTS papers (see LICENSE.md)",
    "channel_names": {"0": "T1", "1": "FLAIR"},
    "labels": {"background": 0, "whole_tumour": 1},
    "file_ending": ".nii.gz",
}


def brain_box(arrays: list[np.ndarray], multiple: int = BOX_MULTIPLE) -> tuple[slice, ...]:
    """The non-zero box of ``arrays`` (same shape), grown to ``multiple`` per axis and kept inside.

    Example:
        >>> a = np.zeros((20, 20, 20)); a[5:9, 3:4, 0:17] = 1
        >>> brain_box([a], 8)
        (slice(3, 11, None), slice(0, 8, None), slice(0, 20, None))
    """
    occupied = np.zeros(arrays[0].shape, dtype=bool)
    for array in arrays:
        occupied |= array != 0
    box = []
    for axis, n in enumerate(occupied.shape):
        other = tuple(a for a in range(occupied.ndim) if a != axis)
        hits = np.flatnonzero(occupied.any(axis=other))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        size = min(-(-(hi - lo) // multiple) * multiple, n // multiple * multiple)
        if size < hi - lo:  # cannot grow to a multiple inside the volume: keep the whole axis
            box.append(slice(0, n))
            continue
        start = min(max(0, lo - (size - (hi - lo)) // 2), n - size)
        box.append(slice(start, start + size))
    return tuple(box)


def crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """``volume`` cut to ``box``, its affine moved so every voxel keeps its world position."""
    affine = volume.affine.copy()
    start = np.array([s.start for s in box], dtype=float)
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[box]), affine, None, volume.header, volume.source_format)


def downsample_mask(mask: np.ndarray, scale: tuple[int, ...]) -> np.ndarray:
    """Block majority of a 0/1 mask: a block is 1 when at least half of its voxels are (shape / scale)."""
    blocks = mask.reshape(*(d for n, s in zip(mask.shape, scale, strict=True) for d in (n // s, s)))
    mean = blocks.mean(axis=tuple(range(1, 2 * len(scale), 2)))
    return (mean >= 0.5).astype(np.uint8)


def make_subject(data: Path, folder: str, subject: str, out: Path) -> dict[str, object]:
    """Write one subject's three files; return what the log prints."""
    from segfuse.data.lowres import simulate_low_resolution

    src = data / folder / subject
    t1, flair = read_image(src / "t1.nii.gz"), read_image(src / "flair.nii.gz")
    label_file = src / "whole_tumour.nii.gz" if (src / "whole_tumour.nii.gz").is_file() else src / "seg.nii.gz"
    label = read_image(label_file)
    if not (t1.shape == flair.shape == label.shape and np.allclose(t1.affine, flair.affine)
            and np.allclose(t1.affine, label.affine)):
        raise ValueError(f"{src}: T1, FLAIR and label do not share one grid")
    box = brain_box([t1.array, flair.array, label.array])
    t1_c, flair_c = crop(t1, box), crop(flair, box)
    mask = (np.asarray(label.array)[box] > 0).astype(np.float32)

    t1_2mm = simulate_low_resolution(t1_c, PRIMARY_SCALE)
    flair_lr = simulate_low_resolution(flair_c, FLAIR_SCALE)
    mask_2mm = downsample_mask(mask, PRIMARY_SCALE)
    affine_2mm, shape_2mm = aux_grid(t1_c.affine, t1_c.shape, PRIMARY_SCALE)
    if t1_2mm.shape != shape_2mm or not np.allclose(t1_2mm.affine, affine_2mm, atol=1e-6):
        raise AssertionError(f"{subject}: 2 mm T1 grid {t1_2mm.shape} is not the edge-aligned grid {shape_2mm}")
    affine_lr, shape_lr = aux_grid(affine_2mm, shape_2mm, (2, 2, 4))
    if flair_lr.shape != shape_lr or not np.allclose(flair_lr.affine, affine_lr, atol=1e-6):
        raise AssertionError(f"{subject}: FLAIR grid {flair_lr.shape} is not the 2x2x4 grid {shape_lr} over the T1")

    def as_int16(array: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(array), 0, np.iinfo(np.int16).max).astype(np.int16)

    write_image(as_int16(t1_2mm.array), t1_2mm, out / "imagesTr" / f"{subject}_0000.nii.gz", np.int16)
    write_image(as_int16(flair_lr.array), flair_lr, out / "imagesTr" / f"{subject}_0001.nii.gz", np.int16)
    reference = Volume(mask_2mm, affine_2mm, None, t1.header, t1.source_format)
    write_image(mask_2mm, reference, out / "labelsTr" / f"{subject}.nii.gz", np.uint8)
    return {"subject": subject, "box_1mm": [s.stop - s.start for s in box], "t1": shape_2mm, "flair": shape_lr,
            "tumour_2mm_voxels": int(mask_2mm.sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data root")
    parser.add_argument("--out", type=Path, default=REPO / "segfuse" / "sample" / "brats", help="sample folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    for sub in ("imagesTr", "labelsTr"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)  # remade from scratch: no stale subjects
        (out / sub).mkdir(parents=True)
    for folder, subject in SUBJECTS:
        print(make_subject(args.data, folder, subject, out))
    meta = {**DATASET_JSON, "numTraining": len(SUBJECTS)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(SUBJECTS)} subjects to {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
