"""Export a trained network for use without segfuse: ONNX, TorchScript or a torch.export program.

``export_model`` writes two files into the output folder:

- the network: ``model.onnx`` (ONNX, run with onnxruntime), ``model.ts`` (TorchScript,
  ``torch.jit.load``) or ``model.pt2`` (``torch.export.load``);
- ``segfuse_export.json``: everything prediction needs around the network: the
  canonical orientation, target spacing, each input's normalisation, every
  auxiliary's name, scale and grid, the labels (names, values, class order), the
  patch size and sliding-window settings, and the inputs' and output's names and
  shapes.

The exported network takes positional tensors (named in ONNX):

- ``image`` ``(B, C, *S)``: the normalised primary on the canonical grid, ``S`` a
  multiple of ``spatial_multiple`` (``size_multiple`` of the network);
- ``aux_<name>`` ``(B, C_a, *S / scale)`` for each auxiliary, in the JSON's order;
- for a network trained with modality dropout, ``present_<name>`` ``(B,)`` for each
  auxiliary: 1.0 where it is given, 0.0 where it is absent (pass zeros in
  ``aux_<name>`` then); an absent auxiliary contributes exactly nothing, as in
  ``FusionUNet(aux={name: None})``;

and returns ``logits`` ``(B, K, *S)``; softmax over axis 1, argmax, and class index
``i`` → label value ``labels.values[i]``.

The batch size is free in every format. ONNX and exported programs also take any
spatial size that is a multiple of ``spatial_multiple``, at least twice it
(``min_spatial_shape``); TorchScript (a trace) keeps
the spatial shape it was traced with, the patch size, which the JSON records.

Every export is checked before it is kept: the exported file is loaded back and
run on a random input, and the largest difference from the eager network is
recorded in the JSON (``verification``).

Example:
    >>> result = export_model("runs/x/checkpoint_best.pt", "exported", fmt="onnx")  # doctest: +SKIP
    >>> result.metadata["inputs"][0]["name"]  # doctest: +SKIP
    'image'
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segfuse import __version__
from segfuse.auxiliary import ModalityNorm
from segfuse.data.preprocess import FOREGROUND_FRACTION
from segfuse.inference.model import LoadedModel, load_model
from segfuse.io.atomic import atomic_write_text, file_sha256
from segfuse.io.errors import SegfuseInputError

__all__ = [
    "EXPORT_FORMATS",
    "METADATA_NAME",
    "ExportResult",
    "ExportedNetwork",
    "export_metadata",
    "export_model",
    "load_exported",
]

logger = logging.getLogger(__name__)

#: format → file name of the exported network.
EXPORT_FORMATS: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.ts", "exported-program": "model.pt2"}
METADATA_NAME = "segfuse_export.json"
_METADATA_FORMAT = "segfuse-export-1"
#: ONNX and exported programs take spatial sizes of at least this many ``spatial_multiple`` blocks.
MIN_BLOCKS = 2
#: Largest difference from the eager network accepted when checking an export (float32 logits).
TOLERANCE = 1e-3


class ExportedNetwork(nn.Module):
    """A :class:`~segfuse.models.net.FusionUNet` with positional tensor inputs, as exporters want them.

    Args:
        net: the network (in eval mode).
        aux_names: the auxiliaries, in input order.
        with_present: add one ``present_<name>`` ``(B,)`` mask per auxiliary (missing-aux mode).

    Shapes:
        ``forward(image, *aux, *present)``: ``image`` ``(B, C, *S)``, ``aux[i]``
        ``(B, C_a, *S / scale_i)``, ``present[i]`` ``(B,)`` → logits ``(B, K, *S)``.
    """

    def __init__(self, net: nn.Module, aux_names: Sequence[str], with_present: bool) -> None:
        super().__init__()
        self.net = net
        self.aux_names = list(aux_names)
        self.with_present = with_present

    def forward(self, image: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        n = len(self.aux_names)
        aux = dict(zip(self.aux_names, tensors[:n], strict=True))
        present = dict(zip(self.aux_names, tensors[n:], strict=True)) if self.with_present else None
        return self.net(image, aux=aux, present=present)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        out_dir: the output folder.
        model_path: the exported network.
        metadata_path: ``segfuse_export.json``.
        metadata: its content.
        max_abs_difference: largest |exported - eager| logit on the check input.
    """

    out_dir: Path
    model_path: Path
    metadata_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    max_abs_difference: float = 0.0


# ------------------------------------------------------------------ metadata


def _norm_dict(norm: ModalityNorm) -> dict[str, Any]:
    kind = norm.kind
    if kind == "ct":
        how = (
            "clip to [clip0, clip1] (the case's min/max when null), "
            "then (x - mean) / std (the clipped case's when null)"
        )
    else:
        how = (
            f"per case and channel: (x - mean) / std over the foreground, the voxels above "
            f"{FOREGROUND_FRACTION} x the 99th percentile of the positive voxels"
        )
    return {**norm.to_dict(), "how": how}


def _io_names(model: LoadedModel) -> tuple[list[str], list[str]]:
    aux = list(model.cfg.data.aux)
    present = [f"present_{n}" for n in aux] if model.allow_missing_aux else []
    return ["image", *[f"aux_{n}" for n in aux], *present], ["logits"]


def export_metadata(model: LoadedModel, fmt: str, *, example_shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The ``segfuse_export.json`` content for ``model`` exported as ``fmt``.

    ``example_shapes``: input name → the shape the export was made (traced) with.
    """
    cfg = model.cfg
    net = model.net
    dims = cfg.spatial_dims
    multiple = [int(m) for m in net.size_multiple]
    axes = ["x", "y", "z"][:dims]
    labels = model.label_values
    names = {int(v): str(n) for v, n in cfg.data.labels.items()}
    channels = int(net.cfg.in_channels)
    dynamic_spatial = fmt != "torchscript"
    aux_meta = []
    inputs: list[dict[str, Any]] = [
        {
            "name": "image",
            "shape": ["batch", channels, *axes] if dynamic_spatial else ["batch", *example_shapes["image"][1:]],
            "dtype": "float32",
            "role": "the normalised primary on the canonical grid at the target spacing"
            + (f"; 2.5D: {2 * cfg.model.context_slices + 1} neighbouring slices as channels" if dims == 2 else ""),
        }
    ]
    for a in net.cfg.aux:  # the auxiliaries' descriptions as the network has them (in-plane scales in 2D)
        scale = [int(s) for s in a.scale]
        shape = [f"{ax}/{s}" if s > 1 else ax for ax, s in zip(axes, scale, strict=True)]
        inputs.append(
            {
                "name": f"aux_{a.name}",
                "shape": ["batch", a.channels, *shape]
                if dynamic_spatial
                else ["batch", *example_shapes[f"aux_{a.name}"][1:]],
                "dtype": "float32",
                "role": f"auxiliary {a.name!r}, normalised, on its edge-aligned grid of scale {scale}",
            }
        )
        aux_meta.append(
            {
                "name": a.name,
                "input": f"aux_{a.name}",
                "channels": a.channels,
                "scale": [int(s) for s in cfg.data.aux[a.name].scale],
                "network_scale": scale,
                "normalisation": _norm_dict(a.norm),
                "trained_dropout": float(a.dropout),
            }
        )
    if model.allow_missing_aux:
        for a in net.cfg.aux:
            inputs.append(
                {
                    "name": f"present_{a.name}",
                    "shape": ["batch"],
                    "dtype": "float32",
                    "role": f"1.0 where aux_{a.name} is given, 0.0 where it is absent (then pass zeros); "
                    "an absent auxiliary contributes nothing",
                }
            )
    out_shape = (
        ["batch", len(labels), *axes] if dynamic_spatial else ["batch", len(labels), *example_shapes["image"][2:]]
    )
    return {
        "format": _METADATA_FORMAT,
        "export_format": fmt,
        "model_file": EXPORT_FORMATS[fmt],
        "segfuse_version": __version__,
        "torch_version": torch.__version__,
        "source_checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        "source_checkpoint_sha256": None if model.checkpoint is None else file_sha256(model.checkpoint),
        "network": {
            "mode": cfg.model.mode,
            "spatial_dims": dims,
            "context_slices": int(cfg.model.context_slices),
            "in_channels": channels,
            "num_classes": len(labels),
            "allow_missing_aux": bool(model.allow_missing_aux),
            "spatial_multiple": multiple,
            "min_spatial_shape": [MIN_BLOCKS * m for m in multiple],
            "dynamic_batch": True,
            "dynamic_spatial": dynamic_spatial,
        },
        "preprocessing": {
            "orientation": "RAS",
            "orientation_how": "reorient by axis flips and permutations only so array axes run toward "
            "Right, Anterior, Superior (nibabel's as_closest_canonical)",
            "target_spacing": None if cfg.data.target_spacing is None else [float(s) for s in cfg.data.target_spacing],
            "spacing_how": "linear resampling of the primary to target_spacing (edges of the field of view kept) "
            "when its spacing differs; none when null",
            "primary": {"modality": cfg.data.primary, "normalisation": _norm_dict(cfg.data.primary_norm)},
            "crop_to_nonzero": bool(cfg.data.crop_to_nonzero),
            "crop_how": "when crop_to_nonzero: the network runs on the box of the voxels where some channel of "
            "the primary is non-zero before normalisation (on the canonical grid, after resampling), its start "
            "rounded down and its end up to multiples of the auxiliary scales' lcm (auxiliaries cut at "
            "start / scale); every voxel outside the box is background",
            "aux_grid": "edge-aligned: auxiliary voxel i covers primary voxels [i*s, (i+1)*s); "
            "shape ceil(primary_shape / scale); affine primary_affine @ [[diag(s), (s-1)/2], [0, 1]]",
            "aux": aux_meta,
        },
        "labels": {
            "values": labels,
            "names": {str(v): names.get(v, "background" if v == 0 else f"label_{v}") for v in labels},
            "class_to_label": "class index i of the logits is label value values[i]",
        },
        "inference": {
            "patch_size": [int(s) for s in cfg.roi_size[:dims]],
            "overlap": float(cfg.inference.overlap),
            "blend": cfg.inference.blend,
            "mirror_axes": [int(a) for a in cfg.inference.mirror_axes],
            "postprocess": "softmax over axis 1, blend windows, argmax, class index -> label value, "
            "then back to the input's grid (undo resampling and reorientation)",
            "slicing": None
            if dims == 3
            else "2D: the network runs on the slices along the last axis; for slice z, image holds slices "
            f"z-{cfg.model.context_slices}..z+{cfg.model.context_slices} (clamped at the edges) as channels and "
            + (
                "each auxiliary its slice z // scale[2]"
                if cfg.model.aux_slice == "containing"
                else "each auxiliary the linear interpolation along the last axis between its slices k0 = "
                "floor(t) and k0 + 1 (clamped), t = (z + 0.5) / scale[2] - 0.5, weights 1 - (t - k0) and t - k0"
            ),
        },
        "inputs": inputs,
        "outputs": [{"name": "logits", "shape": out_shape, "dtype": "float32"}],
        "example_shapes": {k: list(v) for k, v in example_shapes.items()},
    }


# ------------------------------------------------------------------ example inputs


def _example_inputs(
    model: LoadedModel, batch: int, seed: int = 0, extra_blocks: int = 0
) -> tuple[list[str], list[torch.Tensor]]:
    """Random inputs at the patch size rounded up to the network's multiple (at least 2 multiples).

    ``extra_blocks`` more multiples on every axis give a second, larger size for checks.
    """
    net = model.net
    dims = model.cfg.spatial_dims
    gen = torch.Generator().manual_seed(seed)
    spatial = [
        (max(MIN_BLOCKS, math.ceil(r / m)) + extra_blocks) * m
        for r, m in zip(model.cfg.roi_size[:dims], net.size_multiple, strict=True)
    ]
    names, _ = _io_names(model)
    tensors = [torch.randn(batch, net.cfg.in_channels, *spatial, generator=gen)]
    for a in net.cfg.aux:
        tensors.append(
            torch.randn(batch, a.channels, *[n // s for n, s in zip(spatial, a.scale, strict=True)], generator=gen)
        )
    if model.allow_missing_aux:
        for i, _a in enumerate(net.cfg.aux):
            mask = torch.ones(batch)
            mask[(i + 1) % batch] = 0.0  # one sample without this auxiliary: the missing path is exercised
            tensors.append(mask)
    return names, tensors


def _dynamic_shapes(model: LoadedModel, tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    from torch.export import Dim

    net = model.net
    batch = Dim("batch", min=1)
    # at least 2 blocks per axis: a single block takes another branch (torch.export guards it)
    blocks = [Dim(f"blocks_{ax}", min=MIN_BLOCKS) for ax in "xyz"[: model.cfg.spatial_dims]]
    specs: list[dict[int, Any]] = [
        {0: batch, **{2 + d: m * b for d, (m, b) in enumerate(zip(net.size_multiple, blocks, strict=True))}}
    ]
    for a in net.cfg.aux:
        specs.append(
            {
                0: batch,
                **{
                    2 + d: (m // s) * b
                    for d, (m, s, b) in enumerate(zip(net.size_multiple, a.scale, blocks, strict=True))
                },
            }
        )
    specs += [{0: batch} for _ in tensors[len(specs) :]]
    # forward(image, *tensors): torch.export sees two arguments, the second a tuple
    return (specs[0], tuple(specs[1:]))


# ------------------------------------------------------------------ the formats


def _export_onnx(wrapper: ExportedNetwork, model: LoadedModel, tensors, path: Path, opset: int | None) -> None:
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as exc:
            raise SegfuseInputError(
                f"ONNX export needs the packages onnx and onnxscript ({package} is not installed): "
                "pip install 'segfuse[export]'"
            ) from exc
    names, outputs = _io_names(model)
    options: dict[str, Any] = {}
    if opset is not None:
        options["opset_version"] = opset
    # torch's exporter reports its steps on stdout; a library stays quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            tuple(tensors),
            dynamo=True,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=_dynamic_shapes(model, tensors),
            external_data=False,
            verbose=False,
            **options,
        )
    program.save(str(path), external_data=False)


def _run_onnx(path: Path, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SegfuseInputError(
            "checking the ONNX export needs onnxruntime: pip install 'segfuse[export]' (or pass verify=False)"
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, tensors, strict=True)})[0]


def _export_torchscript(wrapper: ExportedNetwork, model: LoadedModel, tensors, path: Path, opset: int | None) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, and a trace warns about the
        # Python-side shape arithmetic it freezes: that is why the spatial shape is fixed.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, tuple(tensors), check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(*tensors).numpy()


def _export_program(wrapper: ExportedNetwork, model: LoadedModel, tensors, path: Path, opset: int | None) -> None:
    program = torch.export.export(wrapper, tuple(tensors), dynamic_shapes=_dynamic_shapes(model, tensors))
    torch.export.save(program, str(path))


def _run_program(path: Path, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> np.ndarray:
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(*tensors).numpy()


_EXPORTERS: dict[str, tuple[Callable[..., None], Callable[..., np.ndarray]]] = {
    "onnx": (_export_onnx, _run_onnx),
    "torchscript": (_export_torchscript, _run_torchscript),
    "exported-program": (_export_program, _run_program),
}


def load_exported(folder: str | Path) -> tuple[Callable[..., np.ndarray], dict[str, Any]]:
    """Load an export folder: ``(run, metadata)``, ``run(*tensors) -> logits`` as numpy.

    ``run`` takes the inputs in the order of ``metadata["inputs"]`` (torch tensors).

    Example:
        >>> run, meta = load_exported("exported")  # doctest: +SKIP
        >>> logits = run(image, flair)  # doctest: +SKIP
    """
    folder = Path(folder)
    meta_path = folder / METADATA_NAME
    if not meta_path.is_file():
        raise SegfuseInputError(f"{folder}: no {METADATA_NAME}; not a segfuse export folder")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    fmt = meta.get("export_format")
    if meta.get("format") != _METADATA_FORMAT or fmt not in _EXPORTERS:
        raise SegfuseInputError(f"{meta_path}: not a segfuse export description (format {meta.get('format')!r})")
    names = [i["name"] for i in meta["inputs"]]
    runner = _EXPORTERS[fmt][1]
    path = folder / meta["model_file"]

    def run(*tensors: torch.Tensor) -> np.ndarray:
        return runner(path, names, list(tensors))

    return run, meta


# ------------------------------------------------------------------ main


def export_model(
    checkpoint: str | Path | Mapping[str, Any] | LoadedModel,
    out_dir: str | Path,
    *,
    fmt: str = "onnx",
    opset: int | None = None,
    verify: bool = True,
) -> ExportResult:
    """Export a checkpoint's network as ``fmt`` into ``out_dir`` with ``segfuse_export.json``.

    Args:
        checkpoint: a checkpoint file or run folder, a loaded checkpoint dict, or a
            :class:`~segfuse.inference.model.LoadedModel`.
        out_dir: output folder (created; files in it with the same names are replaced).
        fmt: ``"onnx"``, ``"torchscript"`` or ``"exported-program"``.
        opset: ONNX opset (default: torch's exporter's choice).
        verify: load the exported file back and compare its logits with the eager
            network's on a random input (batch 2, one sample without each
            auxiliary in missing-aux mode); an export that differs by more than
            :data:`TOLERANCE` is an error and nothing is written.

    Returns:
        An :class:`ExportResult`.

    Raises:
        SegfuseInputError: unknown format, missing export packages (named, with the
            install command), a checkpoint that cannot be read, or an export whose
            outputs differ from the eager network's (the difference given).

    Example:
        >>> export_model("runs/x", "exported", fmt="exported-program").model_path  # doctest: +SKIP
        PosixPath('exported/model.pt2')
    """
    if fmt not in EXPORT_FORMATS:
        raise SegfuseInputError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    model = load_model(checkpoint, device="cpu")
    if model.device.type != "cpu":  # a LoadedModel on a GPU: export a CPU copy
        model = dataclasses.replace(model, net=copy.deepcopy(model.net).cpu(), device=torch.device("cpu"))
    net = model.net.eval()
    wrapper = ExportedNetwork(net, list(model.cfg.data.aux), model.allow_missing_aux).eval()
    names, tensors = _example_inputs(model, batch=2)
    export, run = _EXPORTERS[fmt]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / EXPORT_FORMATS[fmt]
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-export-") as tmp:
        staged = Path(tmp) / target.name
        try:
            with torch.no_grad():
                export(wrapper, model, tensors, staged, opset)
        except SegfuseInputError:
            raise
        except Exception as exc:  # the exporters raise many types; say which format and why
            reason = " ".join(str(exc).split())[:600]
            raise SegfuseInputError(
                f"{fmt} export of this network failed ({type(exc).__name__}: {reason}); "
                f"try another format ({', '.join(f for f in EXPORT_FORMATS if f != fmt)})"
            ) from exc
        difference = 0.0
        if verify:
            # Check on other inputs than the ones exported with: a batch of 3 and,
            # where the format allows it, a larger spatial size.
            check_names, check = _example_inputs(model, batch=3, seed=1, extra_blocks=int(fmt != "torchscript"))
            with torch.no_grad():
                eager = wrapper(*check).numpy()
            got = run(staged, check_names, check)
            if got.shape != eager.shape:
                raise SegfuseInputError(
                    f"{fmt} export check failed: output shape {got.shape}, the network gives {eager.shape}"
                )
            difference = float(np.max(np.abs(got - eager)))
            if not difference <= TOLERANCE:
                raise SegfuseInputError(
                    f"{fmt} export check failed: logits differ from the network's by up to {difference:.3g} "
                    f"(tolerance {TOLERANCE})"
                )
        shapes = {n: list(t.shape) for n, t in zip(names, tensors, strict=True)}
        meta = export_metadata(model, fmt, example_shapes=shapes)
        meta["verification"] = (
            {"checked": True, "max_abs_difference": difference, "tolerance": TOLERANCE}
            if verify
            else {"checked": False}
        )
        if fmt == "onnx":
            import onnx

            opsets = onnx.load(str(staged), load_external_data=False).opset_import
            meta["onnx_opset"] = next(int(o.version) for o in opsets if o.domain in ("", "ai.onnx"))
        shutil.move(str(staged), target)
    meta_path = atomic_write_text(out_dir / METADATA_NAME, json.dumps(meta, indent=2) + "\n")
    logger.info("exported %s to %s (max |difference| %.3g)", fmt, target, difference)
    return ExportResult(out_dir, target, meta_path, meta, difference)
