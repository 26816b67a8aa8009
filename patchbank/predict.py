"""The one scoring pipeline, as anomalib's inferencers' ``predict()``: decode -> prepare -> features ->
search, reweighting and map -> decision -> the map at the input's resolution and its regions.

The service, ``evaluate``, the benchmarks and the console all call :func:`predict`; none of them puts the
stages together on its own, so the same sample gets the same score everywhere. No HTTP types here: the
service turns a :class:`Prediction` into its JSON answer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from patchbank.cloud_formats import check_min_side
from patchbank.clouds import Intrinsics, XyzUnit, read_cloud, to_xyz
from patchbank.data import SampleRef
from patchbank.decode import DEFAULT_MAX_PIXELS, check_pair, decode_rgb
from patchbank.errors import DataError, InputError
from patchbank.preprocess import DEFAULT_MAX_MAP_SIDE, Prepared, prepare
from patchbank.regions import Peak, Region, find_peak, find_regions
from patchbank.scorer import BankScorer, resize_map
from patchbank.units import CloudScale, check_scale


@dataclass(frozen=True)
class Sample:
    """One sample as a line sends it: the bytes of both files; the xyz file's bytes (else its name) pick
    its format (:mod:`patchbank.clouds`).

    ``intrinsics``: the camera of a depth image (else the bank's); ``xyz_unit``: the unit of an xyz cloud's
    coordinates, converted to metres (not for depth images, whose intrinsics' depth_scale gives metres).
    Without a unit the cloud is read as metres and checked against the bank's training clouds' scale."""

    rgb: bytes
    xyz: bytes
    xyz_name: str | None = None
    sample_id: str | None = None
    fields: tuple[str, str] = ("rgb", "xyz")  # how errors name the two inputs (form fields, or file paths)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded pixels either input may have (413 above)
    intrinsics: Intrinsics | None = None
    xyz_unit: XyzUnit | None = None

    @classmethod
    def from_ref(cls, ref: SampleRef) -> Sample:
        """A dataset sample read from disk (in metres, with its category's intrinsics); errors name its
        files."""
        rgb, xyz = ref.rgb.read_bytes(), ref.xyz.read_bytes()
        return cls(rgb, xyz, ref.xyz.name, ref.name, (str(ref.rgb), str(ref.xyz)), intrinsics=ref.intrinsics)

    def cloud(self, intrinsics: Intrinsics | None = None, scale: CloudScale | None = None) -> np.ndarray:
        """The xyz as (H, W, 3) float32 metres. ``intrinsics``: the bank's, for a depth image sent without
        its own; ``scale``: the bank's training clouds', checked when no ``xyz_unit`` was given."""
        field = self.fields[1]
        decoded = read_cloud(self.xyz, self.xyz_name, field, self.max_pixels)
        check_min_side(decoded.array.shape[1], decoded.array.shape[0], field)
        xyz = to_xyz(decoded, field, self.intrinsics or intrinsics, self.xyz_unit)
        if scale is not None and self.xyz_unit is None:
            check_scale(xyz, scale, field, depth_image=decoded.kind == "depth")
        return xyz

    def decode(
        self, intrinsics: Intrinsics | None = None, scale: CloudScale | None = None
    ) -> tuple[Image.Image, np.ndarray]:
        """Both inputs decoded and checked to belong together: the RGB image and the (H, W, 3) float32 cloud
        in metres; ``intrinsics`` and ``scale``: the bank's (see :meth:`cloud`)."""
        image = decode_rgb(self.rgb, self.fields[0], self.max_pixels)
        xyz = self.cloud(intrinsics, scale)
        check_pair(image, xyz, self.fields)
        return image, xyz

    def prepare(
        self, size: int, intrinsics: Intrinsics | None = None, scale: CloudScale | None = None
    ) -> Prepared:
        """Decode both inputs, check that they belong together, and prepare them at ``size``;
        ``intrinsics`` and ``scale``: the bank's (see :meth:`cloud`)."""
        return prepare(*self.decode(intrinsics, scale), size)


class StageTimings(BaseModel):
    """Milliseconds per stage of one pass (a batch shares its pass: every sample reports the pass's times)."""

    decode: float = Field(description="milliseconds decoding and preparing the inputs")
    features: float = Field(description="milliseconds of feature extraction (and of finding the part)")
    search: float = Field(description="milliseconds of nearest-neighbour search, reweighting and the 224 map")
    post: float = Field(description="milliseconds resizing the map and finding regions")


@dataclass(frozen=True)
class Prediction:
    """One sample's result.

    map224: (224, 224) float32 blurred anomaly map at the model's resolution (what the metrics use);
    anomaly_map: (H, W) float32 map at the input RGB's resolution, or smaller with the aspect kept when that
    is over the longest side allowed (None unless asked for); regions: the connected areas of
    ``anomaly_map`` above the pixel threshold, in the input's pixels; peak: the map's maximum (``anomaly_map``,
    else ``map224``) in the input's pixels, the place to look at even when no region is above the threshold;
    image: the input RGB at ``anomaly_map``'s size, for drawing the map over it (None unless asked for);
    nearest: per bank member, the (784,) bank rows of the patches' nearest vectors (-1: not searched).
    """

    sample_id: str | None
    image_score: float
    is_anomalous: bool
    image_threshold: float
    pixel_threshold: float
    map224: np.ndarray
    input_size: tuple[int, int]  # the RGB's (width, height), pixels
    peak: Peak
    timings: StageTimings
    anomaly_map: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    image: Image.Image | None = None
    nearest: tuple[np.ndarray, ...] = ()


def map_size(input_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The (width, height) the answer's map is made at: the input's, scaled down (aspect kept) so that its
    longer side is at most ``max_side``: a 9000 x 9000 upload must not make a 300 MB answer."""
    w, h = input_size
    if max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def predict(
    scorer: BankScorer,
    samples: Sequence[Sample],
    full_maps: bool = True,
    max_map_side: int = DEFAULT_MAX_MAP_SIDE,
    keep_image: bool = False,
) -> list[Prediction]:
    """Score samples in one pass (one backbone pass per member, one search); ``full_maps``: also the map at
    each input's resolution (at most ``max_map_side`` on its longer side, :func:`map_size`) and its regions,
    in the input's pixels; ``keep_image``: also each RGB image at that map's size (``Prediction.image``), to
    draw the map over. The first bad sample raises its InputError (naming it when there are several)."""
    t0 = time.perf_counter()
    manifest = scorer.bank.manifest
    prepared = []
    images: list[Image.Image | None] = []
    for i, s in enumerate(samples):
        if len(samples) > 1 and s.fields == Sample.fields:  # form fields: say which sample of the batch
            s = dataclasses.replace(s, fields=(f"rgb[{i}]", f"xyz[{i}]"))
        image, xyz = s.decode(manifest.intrinsics, manifest.cloud_scale)
        prepared.append(prepare(image, xyz, scorer.image_size))
        images.append(_at_map_size(image, max_map_side) if keep_image else None)
    ids = [s.sample_id for s in samples]
    return predict_prepared(scorer, prepared, ids, full_maps, _ms(t0), max_map_side, images)


def _at_map_size(image: Image.Image, max_side: int) -> Image.Image:
    """The image at the size of its answer's map (:func:`map_size`): bounded memory, whatever was sent."""
    size = map_size(image.size, max_side)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def predict_prepared(
    scorer: BankScorer,
    prepared: Sequence[Prepared],
    sample_ids: Sequence[str | None],
    full_maps: bool = True,
    decode_ms: float = 0.0,
    max_map_side: int = DEFAULT_MAX_MAP_SIDE,
    images: Sequence[Image.Image | None] | None = None,
) -> list[Prediction]:
    """:func:`predict` from prepared samples (the stages after decoding); ``images``: each sample's RGB at its
    map's size, handed on as ``Prediction.image``."""
    t1 = time.perf_counter()
    feats, keep = scorer.features_and_parts(prepared)
    features_ms = _ms(t1)
    t2 = time.perf_counter()
    scores = scorer.score_features(feats, keep)
    search_ms = _ms(t2)
    t3 = time.perf_counter()
    thresholds = scorer.bank.manifest.thresholds
    out = []
    kept: Sequence[Image.Image | None] = [None] * len(prepared) if images is None else images
    for i, (p, sid, image) in enumerate(zip(prepared, sample_ids, kept, strict=True)):
        size = map_size(p.input_size, max_map_side)
        amap = resize_map(scores.maps[i], size) if full_maps else None
        image_score = float(scores.image[i])
        peaked = scores.maps[i] if amap is None else amap
        peak = find_peak(peaked).scaled((peaked.shape[1], peaked.shape[0]), p.input_size)
        out.append(
            dict(
                sample_id=sid,
                image_score=image_score,
                is_anomalous=thresholds.decide(image_score),
                image_threshold=thresholds.image,
                pixel_threshold=thresholds.pixel,
                map224=scores.maps[i],
                input_size=p.input_size,
                peak=peak,
                anomaly_map=amap,
                image=image,
                nearest=tuple(rows[i] for rows in scores.nearest),
                regions=[]
                if amap is None
                else [r.scaled(size, p.input_size) for r in find_regions(amap, thresholds.pixel)],
            )
        )
    post_ms = _ms(t3)
    return [
        Prediction(
            **o,
            timings=StageTimings(decode=decode_ms, features=features_ms, search=search_ms, post=post_ms),
        )
        for o in out
    ]


def predict_refs(
    scorer: BankScorer,
    refs: Sequence[SampleRef],
    batch_size: int = 8,
    full_maps: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> Iterator[tuple[list[SampleRef], list[Prediction]]]:
    """:func:`predict` over dataset samples in batches, files read ahead in a thread; yields each batch's refs
    and predictions. A sample that cannot be read is a DataError naming its files."""
    chunks = [list(refs[i : i + batch_size]) for i in range(0, len(refs), batch_size)]
    bar = tqdm(total=len(refs), desc=desc, unit="sample", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = pool.map(lambda c: [Sample.from_ref(r) for r in c], chunks)
        for chunk, samples in zip(chunks, read, strict=True):
            try:
                preds = predict(scorer, samples, full_maps)
            except InputError as exc:
                raise DataError(str(exc)) from exc
            bar.update(len(chunk))
            yield chunk, preds
    bar.close()
