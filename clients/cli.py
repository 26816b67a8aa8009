"""The ``score`` command: score one sample, or every sample of a folder as a production line would.

    score --url URL --category C --rgb a.png --xyz a.tiff [--map none|png|overlay|array] [--save-map heat.png]
          [--json]
    score --url URL --category C --dir FOLDER --out results.jsonl [--overlays OVERLAYS]
    score ... --xyz a.ply --xyz-unit mm          an xyz cloud in millimetres (or um)
    score ... --xyz depth.png --intrinsics camera.json   a depth image and its camera

With ``--dir`` and no ``--intrinsics``, the ``intrinsics.json`` of a dataset's category folder (the MVTec 3D-AD
layout ``<root>/<category>/<split>/<kind>/xyz``, as ``patchbank convert`` writes it) or of a flat folder is
sent with that folder's samples.

Exit codes: 0 all scored; 1 some samples of ``--dir`` failed (each has an error line in the JSONL); 2 usage
errors, nothing to score, or (single mode) the service refused or could not be reached. Expected errors are
one ``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np
from tqdm import tqdm

from patchbank_client.client import (
    MAP_FORMATS,
    XYZ_UNITS,
    APIError,
    MapFormat,
    PatchbankClient,
    PatchbankClientError,
    ScoreResult,
    XyzUnit,
    intrinsics_json,
)

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
# Point clouds, in order of preference when several share a name. In a flat folder NAME.png is the RGB image,
# so a 16-bit PNG depth image is looked for only in the xyz folder of the MVTec 3D-AD layout.
XYZ_SUFFIXES = (".tiff", ".tif", ".npy", ".ply", ".pcd")
MVTEC_XYZ_SUFFIXES = (*XYZ_SUFFIXES, ".png")
SPLITS = ("train", "validation", "test")
INTRINSICS_FILE = "intrinsics.json"  # a dataset category's depth camera
ENV_URL = "PATCHBANK_URL"
ENV_API_KEY = "PATCHBANK_API_KEY"


class UsageError(Exception):
    """A problem with what the user asked for: reported as ``error: ...`` with exit code 2."""


@dataclass(frozen=True)
class Sample:
    rgb: Path
    xyz: Path
    intrinsics: Path | None = None  # the dataset's intrinsics.json for this sample, when there is one


# --------------------------------------------------------------------------------------------------- finding


def _by_stem(folder: Path, names: Sequence[str], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``stem -> path`` for the files among ``names`` with one of ``suffixes`` (the earliest suffix wins)."""
    found: dict[str, Path] = {}
    rank: dict[str, int] = {}
    for name in names:
        path = folder / name
        suffix = path.suffix.lower()
        if suffix not in suffixes or not path.is_file():
            continue
        r = suffixes.index(suffix)
        if path.stem not in found or r < rank[path.stem]:
            found[path.stem], rank[path.stem] = path, r
    return found


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _intrinsics_file(folder: Path) -> Path | None:
    path = folder / INTRINSICS_FILE
    return path if path.is_file() else None


def _kind_intrinsics(kind_dir: Path) -> Path | None:
    """``<category>/intrinsics.json`` for an MVTec kind folder ``<category>/<split>/<kind>``."""
    split_dir = kind_dir.parent
    return _intrinsics_file(split_dir.parent) if split_dir.name in SPLITS else None


def find_samples(folder: Path) -> tuple[list[Sample], int]:
    """Every (rgb, xyz) pair under ``folder`` in sorted order, and how many rgb files had no xyz partner.

    Two layouts, mixed freely at any depth: the MVTec 3D-AD one (``.../rgb/NNN.png`` with a sibling
    ``.../xyz/NNN.<ext>``, any cloud format including a 16-bit PNG depth image; ``gt`` folders are ignored),
    and flat folders of pairs by name (``NAME.png`` next to ``NAME.tiff``, ``.npy``, ``.ply`` or ``.pcd``).
    Each sample carries the camera file of its dataset: ``<category>/intrinsics.json`` above
    ``<category>/<split>/<kind>/rgb``, or ``intrinsics.json`` in a flat folder. Raises UsageError when
    ``folder`` is missing or unreadable.
    """
    if not folder.exists():
        raise UsageError(f"{folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    try:
        os.listdir(folder)
    except OSError as exc:
        raise UsageError(f"cannot read {folder}: {exc.strerror or exc}") from exc

    samples: list[Sample] = []
    unpaired = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        if here.name == "rgb" and (here.parent / "xyz").is_dir():
            xyz_dir = here.parent / "xyz"
            xyzs = _by_stem(xyz_dir, _listdir(xyz_dir), MVTEC_XYZ_SUFFIXES)
            camera = _kind_intrinsics(here.parent)
        elif here.name in ("xyz", "gt") and (here.parent / "rgb").is_dir():
            continue  # the other half of an MVTec kind folder: reached through its rgb sibling
        else:
            xyzs = _by_stem(here, filenames, XYZ_SUFFIXES)
            camera = _intrinsics_file(here) if INTRINSICS_FILE in filenames else None
        for stem, rgb in sorted(_by_stem(here, filenames, RGB_SUFFIXES).items()):
            xyz = xyzs.get(stem)
            if xyz is None:
                unpaired += 1
            else:
                samples.append(Sample(rgb, xyz, camera))
    samples.sort(key=lambda s: s.rgb)
    return samples, unpaired


# --------------------------------------------------------------------------------------------------- output


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_line(result: ScoreResult, name: str, latency_ms: float | None = None) -> str:
    """``puck/v0001 a.png: score 12.34 (threshold 15.00) OK, 2 regions, 506 ms``."""
    verdict = "NG" if result.is_anomalous else "OK"
    ms = result.timings_ms.get("total", latency_ms)
    timing = f", {ms:.0f} ms" if ms is not None else ""
    found = _plural(len(result.regions), "region")
    if (p := result.points) is not None:  # a 3D-only bank
        found = (
            f"{p.above_threshold:,} of {p.count:,} points above {result.pixel_threshold:.2f}, "
            f"peak point #{p.peak_index}"
        )
    return (
        f"{result.category}/{result.bank_version} {name}: score {result.image_score:.2f} "
        f"(threshold {result.threshold:.2f}) {verdict}, {found}{timing}"
    )


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _result_json(result: ScoreResult) -> dict[str, Any]:
    return result.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------- modes


def _client(args: argparse.Namespace) -> PatchbankClient:
    return PatchbankClient(
        args.url, api_key=args.api_key or None, timeout=args.timeout, retries=args.retries, backoff=0.5
    )


def _read_intrinsics(path: Path) -> str:
    """The JSON text of a camera file; UsageError saying what is wrong with it."""
    try:
        return intrinsics_json(path)
    except OSError as exc:
        raise UsageError(f"cannot read intrinsics {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _given_intrinsics(args: argparse.Namespace) -> str | None:
    return None if args.intrinsics is None else _read_intrinsics(Path(args.intrinsics))


def _run_single(args: argparse.Namespace) -> int:
    if args.overlays:
        raise UsageError("--overlays is for --dir; for one sample give --map overlay --save-map FILE")
    if args.save_map and args.map not in (None, "png", "overlay"):
        raise UsageError(
            f"--save-map writes a PNG: it needs --map png (the default) or overlay, not --map {args.map}"
        )
    map_format = cast(MapFormat, args.map or ("png" if args.save_map else "none"))
    intrinsics = _given_intrinsics(args)
    try:
        with _client(args) as client:
            t0 = time.perf_counter()
            if args.rgb is None:  # a 3D-only bank: the cloud alone
                result = client.score_points(args.category, Path(args.xyz), sample_id=args.sample_id)
            else:
                result = client.score(
                    args.category,
                    Path(args.rgb),
                    Path(args.xyz),
                    map=map_format,
                    sample_id=args.sample_id,
                    xyz_unit=args.xyz_unit,
                    intrinsics=intrinsics,
                )
            latency_ms = (time.perf_counter() - t0) * 1000
    except OSError as exc:
        return _error(f"cannot read {exc.filename or 'input'}: {exc.strerror or exc}")
    except (PatchbankClientError, ValueError, TypeError) as exc:
        return _error(str(exc))

    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        print(summary_line(result, args.rgb or args.xyz, latency_ms))
    if args.save_points:
        scores = result.point_scores()
        if scores is None:
            return _error("the server sent no per-point scores (--save-points is for a 3D-only bank)")
        try:
            np.save(args.save_points, scores, allow_pickle=False)
        except OSError as exc:
            return _error(f"cannot write {args.save_points}: {exc.strerror or exc}")
    if args.save_map:
        png = result.overlay_png() if map_format == "overlay" else result.map_png()
        if png is None:
            return _error(f"the server sent no {map_format} anomaly map")
        try:
            Path(args.save_map).write_bytes(png)
        except OSError as exc:
            return _error(f"cannot write {args.save_map}: {exc.strerror or exc}")
    return 0


@dataclass(frozen=True)
class _Cloud:
    """How every sample's cloud is to be read: ``unit`` for all; ``intrinsics`` (JSON) given for all, else
    ``found``: each dataset intrinsics file's JSON."""

    unit: XyzUnit | None
    intrinsics: str | None
    found: dict[Path, str]

    def camera(self, sample: Sample) -> str | None:
        if self.intrinsics is not None or sample.intrinsics is None:
            return self.intrinsics
        return self.found[sample.intrinsics]


@dataclass(frozen=True)
class _Overlays:
    """Where ``--overlays`` writes each sample's overlay: its rgb file's path under the scored folder, in
    ``folder``, without an MVTec ``rgb`` level (``test/hole/rgb/000.png`` -> ``test/hole/000.png``)."""

    folder: Path
    scored: Path

    def path(self, rgb: Path) -> Path:
        rel = rgb.relative_to(self.scored)
        if rel.parent.name == "rgb":
            rel = rel.parent.parent / rel.name
        return self.folder / rel.with_suffix(".png")

    def write(self, result: ScoreResult, rgb: Path) -> Path:
        png = result.overlay_png()
        if png is None:
            raise UsageError("the server sent no overlay (is it older than map=overlay?)")
        path = self.path(rgb)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path


def _score_one(
    client: PatchbankClient,
    category: str,
    map_format: MapFormat,
    cloud: _Cloud,
    sample: Sample,
    overlays: _Overlays | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"rgb": str(sample.rgb), "xyz": str(sample.xyz)}
    t0 = time.perf_counter()
    try:
        result = client.score(
            category,
            sample.rgb,
            sample.xyz,
            map=map_format,
            xyz_unit=cloud.unit,
            intrinsics=cloud.camera(sample),
        )
    except APIError as exc:
        return {**record, "error": exc.reason, "status": exc.status_code}
    except OSError as exc:
        return {
            **record,
            "error": f"cannot read {exc.filename or 'input'}: {exc.strerror or exc}",
            "status": None,
        }
    except (PatchbankClientError, ValueError, TypeError) as exc:
        return {**record, "error": str(exc), "status": None}
    record.update(_result_json(result))
    record["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if overlays is not None:
        del record["anomaly_map"]  # the picture is in its file
        try:
            record["overlay"] = str(overlays.write(result, sample.rgb))
        except OSError as exc:
            return {**record, "error": f"cannot write its overlay: {exc.strerror or exc}", "status": None}
        except UsageError as exc:
            return {**record, "error": str(exc), "status": None}
    return record


def _open_out(out: str) -> TextIO:
    if out == "-":
        return sys.stdout
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc


def _run_dir(args: argparse.Namespace) -> int:
    if args.save_map or args.json:
        raise UsageError(
            "--save-map and --json are for one sample (--rgb/--xyz); --dir writes JSON lines (and --overlays)"
        )
    if args.overlays and args.map not in (None, "overlay"):
        raise UsageError(f"--overlays asks for map=overlay: drop --map {args.map}")
    folder = Path(args.dir)
    given = _given_intrinsics(args)
    samples, unpaired = find_samples(folder)
    if not samples:
        raise UsageError(
            f"no samples found in {folder} (expected .../rgb/NNN.png with .../xyz/NNN.tiff (or .npy, .ply, "
            ".pcd, depth .png), or NAME.png with NAME.tiff/.npy/.ply/.pcd)"
        )
    if unpaired:
        print(f"warning: skipped {_plural(unpaired, 'rgb file')} without an xyz file", file=sys.stderr)
    found: dict[Path, str] = {}
    if given is None:
        for path in sorted({s.intrinsics for s in samples if s.intrinsics is not None}):
            found[path] = _read_intrinsics(path)
            print(f"using the camera intrinsics in {path}", file=sys.stderr)
    cloud = _Cloud(args.xyz_unit, given, found)
    overlays = _Overlays(Path(args.overlays), folder) if args.overlays else None
    map_format = cast(MapFormat, "overlay" if overlays else (args.map or "none"))

    with _client(args) as client:
        # Fail fast on what would fail every sample alike: unreachable service, bad key, unknown category.
        try:
            client.category(args.category)
        except (PatchbankClientError, ValueError) as exc:
            return _error(str(exc))

        out = _open_out(args.out)
        report = sys.stderr if out is sys.stdout else sys.stdout
        ok = ng = errors = 0
        latencies: list[float] = []
        interrupted = False
        try:
            for sample in tqdm(
                samples, unit="sample", desc=args.category, file=sys.stderr, dynamic_ncols=True
            ):
                record = _score_one(client, args.category, map_format, cloud, sample, overlays)
                out.write(json.dumps(record) + "\n")
                out.flush()
                if "error" in record:
                    errors += 1
                else:
                    latencies.append(record["latency_ms"])
                    if record["is_anomalous"]:
                        ng += 1
                    else:
                        ok += 1
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if out is not sys.stdout:
                out.close()

    done = ok + ng + errors
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        latency = f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    else:
        latency = "latency n/a"
    where = "" if args.out == "-" else f" -> {args.out}"
    print(f"{done} samples: {ok} OK, {ng} NG, {errors} errors; {latency}{where}", file=report)
    if interrupted:
        print(f"interrupted after {done} of {len(samples)} samples", file=sys.stderr)
        return 130
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------------- main


DESCRIPTION = (
    "Score RGB + xyz samples with a Patchbank service: one sample (--rgb/--xyz), "
    "or every sample under a folder (--dir, MVTec 3D-AD layout or NAME.png + NAME.tiff pairs). "
    "Point clouds: xyz TIFF/.npy, organized PLY/PCD, or depth images with the camera's intrinsics."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get(ENV_URL),
        help=f"service base URL, e.g. http://inspect-01:8000 (default: ${ENV_URL})",
    )
    p.add_argument("--category", required=True, help="category (bank) to score against")
    p.add_argument(
        "--api-key", default=os.environ.get(ENV_API_KEY), help=f"API key (default: ${ENV_API_KEY})"
    )
    p.add_argument("--rgb", help="RGB image (PNG/JPEG/TIFF) of one sample (none for a 3D-only bank)")
    p.add_argument(
        "--xyz",
        help="point cloud of one sample: xyz TIFF/.npy, organized PLY/PCD, or a depth image with --intrinsics; "
        "for a 3D-only bank an unorganized PCD/PLY, given alone",
    )
    p.add_argument(
        "--xyz-unit",
        choices=XYZ_UNITS,
        default=None,
        help="unit of the xyz clouds' coordinates (default: metres); not for depth images",
    )
    p.add_argument(
        "--intrinsics",
        metavar="FILE",
        help="depth camera as JSON {fx, fy, cx, cy, depth_scale[, width, height]}, for depth images (default: "
        f"the bank's; with --dir, also a dataset category's {INTRINSICS_FILE})",
    )
    p.add_argument("--dir", help="score every sample under this folder, one request at a time")
    p.add_argument("--out", help="JSON lines file for --dir results ('-' for stdout)")
    p.add_argument("--map", choices=MAP_FORMATS, default=None, help="anomaly map to ask for (default: none)")
    p.add_argument(
        "--save-map",
        metavar="PNG",
        help="write the map's PNG here (one sample): the heatmap, or the overlay with --map overlay",
    )
    p.add_argument(
        "--overlays",
        metavar="DIR",
        help="with --dir: ask for map=overlay and write each sample's overlay PNG (the heatmap over the part, "
        "regions outlined, a colour bar) under DIR, named as the sample's rgb file; its JSON line names it",
    )
    p.add_argument(
        "--save-points",
        metavar="NPY",
        help="a 3D-only bank (--xyz alone): write every point's score here, float32 (N,) in the file's order",
    )
    p.add_argument("--sample-id", help="sample id the service echoes back and logs (one sample)")
    p.add_argument("--json", action="store_true", help="print the full JSON answer (one sample)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    p.add_argument(
        "--retries", type=int, default=3, help="extra tries on connection errors and 503 (default: 3)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="score", description=DESCRIPTION)
    configure(p)
    return p


def _check(args: argparse.Namespace) -> None:
    if not args.url:
        raise UsageError(f"--url is required (or set ${ENV_URL})")
    if args.retries < 0 or args.timeout <= 0:
        raise UsageError("--retries must be >= 0 and --timeout > 0")
    single = args.rgb is not None or args.xyz is not None
    if args.dir is not None and single:
        raise UsageError("give either --dir or --rgb/--xyz, not both")
    if args.dir is None and not args.xyz:
        raise UsageError(
            "give --rgb and --xyz for one sample (--xyz alone for a 3D-only bank), or --dir and --out for a folder"
        )
    if args.dir is not None and not args.out:
        raise UsageError("--dir needs --out (a JSON lines file, or '-' for stdout)")


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        return _run_dir(args) if args.dir is not None else _run_single(args)
    except UsageError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True)
class _ScoreCommand:
    """``patchbank score``: the same command, registered with the ``patchbank`` command (duck-typed, so the
    client imports nothing of the engine's packages)."""

    name: str = "score"
    help: str = "score samples with a running service (the line PC's client)"
    description: str = DESCRIPTION

    def configure(self, p: argparse.ArgumentParser) -> None:
        configure(p)

    def run(self, args: argparse.Namespace) -> int:
        return run(args)


SCORE = _ScoreCommand()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors and --help: an exit code, not an exception
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
