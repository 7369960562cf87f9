"""Readers for the segmentation benchmark layouts users have on disk.

A *layout* is a way of arranging image/mask pairs in folders. Five are known:

========  ==========================================================================
layout    folders (names matched case-insensitively)
========  ==========================================================================
duts      ``<SPLIT>-Image/`` + ``<SPLIT>-Mask/`` (``DUTS-TE-Image`` + ``DUTS-TE-Mask``,
          ``DUTS-TR-Image`` + ``DUTS-TR-Mask``); one dataset per split, named ``<SPLIT>``.
dis5k     ``<SUBSET>/im/`` + ``<SUBSET>/gt/`` (``DIS-TE1`` ... ``DIS-TE4``, ``DIS-VD``,
          ``DIS-TR``); one dataset per subset, named after the subset folder. The root
          may also be one subset folder (holding ``im/`` and ``gt/`` itself).
cod10k    ``Imgs/`` + ``GT/`` (COD10K test / CAMO / CHAMELEON / NC4K as distributed with
          SINet), or ``Image/`` + ``GT_Object/`` (COD10K-v3); named after the folder
          holding them.
isic      ``*_Data/`` (or ``*_Input/``, ISIC 2018) + ``*_GroundTruth/``, masks named
          ``<image stem>_segmentation.png`` or ``_Segmentation.png``; the Data and
          GroundTruth folders of one split are paired by their shared name prefix
          (``Part1``/``Task1``-style tokens ignored); one dataset per pair, named after
          the Data folder without its ``_Data`` suffix (e.g. ``ISIC-2017_Test_v2``).
          ``*_superpixels.png`` files are ignored.
generic   ``images/`` + ``masks/``; named after the folder holding them.
========  ==========================================================================

Where to look: every layout's signature folders are looked for in the root and one level
down (for dis5k, whose signature is a subset folder: the root itself, its children and its
grandchildren, so both ``DIS5K/`` and its parent work). All matches at the shallowest level
where a layout matches are returned. :func:`detect_layout` tries the layouts from the most
specific to the least: dis5k, isic, duts, cod10k, generic.

A folder whose name says only which split it is (``Test``, ``train``...) is named with its
parent in front (``COD10K-v3/Test`` -> ``COD10K-v3-Test``).

Pairing
-------
Image files are those with suffix ``.jpg .jpeg .png .bmp .tif .tiff`` (any case) found
recursively in the image folder (hidden files and folders ignored); masks are found the
same way in the mask folder. An image and its mask share their path relative to their folder,
less the suffix (for isic, less the ``_segmentation`` tail too); that relative stem is the
sample's name. Never paired, and listed in :attr:`SegmentationDataset.skipped` as
``(file, reason)`` with ``file`` relative to the dataset root instead:

* an image without a mask, and a mask without an image;
* several images (or several masks) with the same stem (``a.jpg`` and ``a.png``): ambiguous;
* a pair whose sizes differ (read from the file headers, without decoding, with the EXIF
  orientation applied as :func:`basam.io.read_image` does);
* a file whose header cannot be read.

A missing folder, an image folder without images or a mask folder without masks raise
:class:`~basam.errors.InputError`. A dataset all of whose pairs are skipped is still
returned (with no samples) so that the caller can report it.

Splits
------
A dataset that ships without a test split (Kvasir-SEG) is split here: ``PATH[:LAYOUT]:split=test``
or ``:split=train`` (in ``basam evaluate --data``, ``basam train --data`` / ``--val-data``, and
the YAML ``data:`` lists). The split is fixed, not an option, so that every machine and every
run sees the same parts: each paired sample (its name, the relative file stem) gets the key
``SHA-256("basam-split\\0<SPLIT_SEED>\\0<name>")``; the samples sorted by name are put in the
order of their keys (a seeded permutation that no RNG library version can change), and the first
``round(SPLIT_TEST_FRACTION * n)`` of that order (:data:`SPLIT_TEST_FRACTION` = 0.2,
:data:`SPLIT_SEED` = 0) are the test part, the rest the train part. Both parts keep the name
order; the dataset is named ``<name>-test`` / ``<name>-train``. Training refuses a test part.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from basam.errors import InputError
from basam.io import read_image, read_mask

__all__ = [
    "LAYOUTS",
    "IMAGE_SUFFIXES",
    "Sample",
    "SegmentationDataset",
    "parse_data_arg",
    "detect_layout",
    "open_datasets",
    "SPLITS",
    "SPLIT_TEST_FRACTION",
    "SPLIT_SEED",
    "DataSpec",
    "parse_data_spec",
    "split_samples",
    "apply_split",
    "open_data_spec",
]

#: Known layouts, in the order they are documented (detection order: see :data:`_DETECT_ORDER`).
LAYOUTS: tuple[str, ...] = ("duts", "dis5k", "cod10k", "isic", "generic")

#: Most specific first: the order :func:`detect_layout` tries them in.
_DETECT_ORDER: tuple[str, ...] = ("dis5k", "isic", "duts", "cod10k", "generic")

#: Suffixes of image and mask files (compared lower-case).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

#: What each layout looks for, for error messages.
_EXPECTED: dict[str, str] = {
    "duts": "<SPLIT>-Image/ + <SPLIT>-Mask/ folders (e.g. DUTS-TE-Image/ + DUTS-TE-Mask/)",
    "dis5k": "<SUBSET>/im/ + <SUBSET>/gt/ folders (e.g. DIS-TE1/im/ + DIS-TE1/gt/)",
    "cod10k": "Imgs/ + GT/ or Image/ + GT_Object/ folders",
    "isic": "*_Data/ (or *_Input/) + *_GroundTruth/ folders (e.g. ISIC-2017_Test_v2_Data/)",
    "generic": "images/ + masks/ folders",
}

# Folder names that say only which split a folder is; such folders are named with their parent.
_SPLIT_WORDS = frozenset(
    {"train", "training", "test", "testing", "val", "valid", "validation", "eval", "trainval"}
)


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image/mask pair.

    Attributes:
        name: unique, stable id within its dataset: the image's path relative to the image
            folder, without suffix, with ``/`` separators (e.g. ``ILSVRC2012_test_00000003``).
        image_path: the image file.
        mask_path: the ground-truth mask file.
    """

    name: str
    image_path: Path
    mask_path: Path


@dataclass
class SegmentationDataset:
    """The pairs of one dataset (one split / subset), in a deterministic order.

    Attributes:
        name: e.g. ``DUTS-TE``, ``DIS-TE1``, ``COD10K``, ``ISIC-2017_Test_v2``, or the folder
            name for the cod10k and generic layouts.
        root: the folder holding this dataset's image and mask folders.
        layout: one of :data:`LAYOUTS`.
        samples: the pairs, sorted by name.
        skipped: ``(file, reason)`` for every file left out, ``file`` relative to ``root``
            (``/`` separators), sorted.
    """

    name: str
    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode sample ``i``.

        Returns:
            ``(image, mask)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` bool, the mask
            thresholded at 128 (``value >= 128`` is foreground; colour masks via luminance).

        Raises:
            InputError: an unreadable file, or decoded sizes that differ.
        """
        s = self.samples[i]
        image = read_image(s.image_path)
        mask = read_mask(s.mask_path, threshold=128)
        if image.shape[:2] != mask.shape:
            h, w = image.shape[:2]
            mh, mw = mask.shape
            raise InputError(
                f"image '{s.image_path}' is {w}x{h} but its mask '{s.mask_path}' is {mw}x{mh}"
            )
        return image, mask


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


_LAYOUT_TOKEN = re.compile(r"[A-Za-z0-9_+\-]*")


def parse_data_arg(arg: str) -> tuple[Path, str | None]:
    """Split ``PATH[:LAYOUT]`` into a path and a layout name (``None`` when not given).

    Only the last ``:`` can start a layout, and only when what follows it has no path
    separator: ``/data/a:b/DUTS`` is a path; ``/data/DUTS:duts`` is ``/data/DUTS`` with the
    duts layout. A suffix that names a known layout is taken as one unless the whole
    argument is an existing path and the part before the ``:`` is not. A suffix that looks
    like a layout name but is none of :data:`LAYOUTS` is an error, unless the whole argument
    is an existing path (a folder really named ``x:y``). ``~`` is expanded.

    Raises:
        InputError: empty argument, or an unknown layout name.
    """
    if not isinstance(arg, str):
        arg = os.fsdecode(arg)
    if not arg:
        raise InputError("empty data path: expected PATH or PATH:LAYOUT")
    whole = Path(arg).expanduser()
    head, sep, tail = arg.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return whole, None
    if not _LAYOUT_TOKEN.fullmatch(tail):
        return whole, None
    head_path = Path(head).expanduser()
    if tail.lower() in LAYOUTS:
        if whole.exists() and not head_path.exists():
            return whole, None
        return head_path, tail.lower()
    if whole.exists():
        return whole, None
    raise InputError(
        f"unknown dataset layout {tail!r} in {arg!r}: expected one of {', '.join(LAYOUTS)}"
    )


# --------------------------------------------------------------------------------------------
# Folder scanning
# --------------------------------------------------------------------------------------------


def _subdirs(d: Path) -> dict[str, Path]:
    """Sub-folders of ``d`` by lower-case name (hidden ones left out; first name wins)."""
    out: dict[str, Path] = {}
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir():
                out.setdefault(e.name.lower(), Path(e.path))
        except OSError:
            continue
    return out


def _levels(root: Path, depth: int) -> list[list[Path]]:
    """``[[root], children, grandchildren, ...]`` up to ``depth`` levels below the root."""
    levels = [[root]]
    for _ in range(depth):
        nxt: list[Path] = []
        for d in levels[-1]:
            nxt.extend(_subdirs(d).values())
        levels.append(nxt)
    return levels


def _display_name(folder: Path) -> str:
    """Dataset name for a folder: its name, with its parent's in front if it names a split."""
    name = folder.name or str(folder)
    if name.lower() in _SPLIT_WORDS and folder.parent.name:
        return f"{folder.parent.name}-{name}"
    return name


@dataclass
class _Unit:
    """One dataset found on disk, before its files are paired."""

    name: str
    root: Path
    image_dir: Path
    mask_dir: Path
    mask_key: Callable[[str], str] = field(default=lambda stem: stem)
    ignore: Callable[[str], bool] = field(default=lambda stem: False)


@dataclass
class _Found:
    units: list[_Unit] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)  # an image folder found, its mask folder not


def _pair_folders(levels: Iterable[Iterable[Path]], pairs: list[tuple[str, str]]) -> _Found:
    """Folders ``d`` holding ``d/<img>`` + ``d/<msk>`` for one of ``pairs``, at the first level
    where any is found."""
    found = _Found()
    for level in levels:
        for d in level:
            subs = _subdirs(d)
            for img, msk in pairs:
                if img in subs and msk in subs:
                    found.units.append(_Unit(_display_name(d), d, subs[img], subs[msk]))
                    break
            else:
                for img, msk in pairs:
                    if img in subs:
                        found.missing.append(d / msk)
                        break
        if found.units:
            return found
    return found


def _find_generic(root: Path) -> _Found:
    return _pair_folders(_levels(root, 1), [("images", "masks")])


def _find_cod10k(root: Path) -> _Found:
    return _pair_folders(_levels(root, 1), [("imgs", "gt"), ("image", "gt_object")])


def _find_dis5k(root: Path) -> _Found:
    return _pair_folders(_levels(root, 2), [("im", "gt")])


_DUTS_IMAGE = re.compile(r"(?i)(.+)[-_]image$")


def _find_duts(root: Path) -> _Found:
    found = _Found()
    for level in _levels(root, 1):
        for d in level:
            subs = _subdirs(d)
            for lower, path in subs.items():
                m = _DUTS_IMAGE.fullmatch(path.name)
                if not m:
                    continue
                split = m.group(1)
                mask = subs.get(f"{split.lower()}{lower[len(split)]}mask")
                if mask is None:
                    found.missing.append(d / f"{split}-Mask")
                    continue
                found.units.append(_Unit(split, d, path, mask))
        if found.units:
            return found
    return found


_ISIC_DATA = re.compile(r"(?i)(.+)_(data|input)$")
_ISIC_GT = re.compile(r"(?i)(.+)_groundtruth$")
_ISIC_NOISE = re.compile(r"(?i)(part|task)[0-9]+([-_][0-9]+)*")
_ISIC_SEG = re.compile(r"(?i)_segmentation$")
_ISIC_SUPERPIXELS = re.compile(r"(?i)_superpixels$")


def _isic_key(prefix: str) -> tuple[str, ...]:
    """``ISIC-2017_Test_v2_Part1`` -> ``('isic-2017', 'test', 'v2')``."""
    return tuple(
        t.lower() for t in prefix.split("_") if t and not _ISIC_NOISE.fullmatch(t)
    )


def _isic_mask_key(stem: str) -> str:
    return _ISIC_SEG.sub("", stem)


def _isic_ignore(stem: str) -> bool:
    return bool(_ISIC_SUPERPIXELS.search(stem))


def _find_isic(root: Path) -> _Found:
    found = _Found()
    for level in _levels(root, 1):
        for d in level:
            subs = _subdirs(d)
            data = {p.name: p for p in subs.values() if _ISIC_DATA.fullmatch(p.name)}
            gts = {p.name: p for p in subs.values() if _ISIC_GT.fullmatch(p.name)}
            if not data:
                continue
            if not gts:
                found.missing.extend(
                    d / f"{_ISIC_DATA.fullmatch(n).group(1)}_GroundTruth"  # type: ignore[union-attr]
                    for n in sorted(data)
                )
                continue
            gt_by_key: dict[tuple[str, ...], list[str]] = {}
            for n in sorted(gts):
                gt_by_key.setdefault(_isic_key(_ISIC_GT.fullmatch(n).group(1)), []).append(n)  # type: ignore[union-attr]
            pairs: list[tuple[str, str]] = []
            unpaired_data: list[str] = []
            used_gt: set[str] = set()
            for n in sorted(data):
                key = _isic_key(_ISIC_DATA.fullmatch(n).group(1))  # type: ignore[union-attr]
                cands = [g for g in gt_by_key.get(key, []) if g not in used_gt]
                if len(cands) >= 1:
                    pairs.append((n, cands[0]))
                    used_gt.add(cands[0])
                else:
                    unpaired_data.append(n)
            left_gt = [g for g in sorted(gts) if g not in used_gt]
            if len(unpaired_data) == 1 and len(left_gt) == 1:
                # One Data and one GroundTruth folder whose names differ otherwise: a pair.
                pairs.append((unpaired_data[0], left_gt[0]))
            for dn, gn in pairs:
                prefix = _ISIC_DATA.fullmatch(dn).group(1)  # type: ignore[union-attr]
                found.units.append(
                    _Unit(prefix, d, data[dn], gts[gn], mask_key=_isic_mask_key, ignore=_isic_ignore)
                )
        if found.units:
            return found
    return found


_FINDERS: dict[str, Callable[[Path], _Found]] = {
    "duts": _find_duts,
    "dis5k": _find_dis5k,
    "cod10k": _find_cod10k,
    "isic": _find_isic,
    "generic": _find_generic,
}


def _check_root(root: Path) -> Path:
    root = Path(os.fsdecode(root)).expanduser()
    if not root.exists():
        raise InputError(f"folder not found: '{root}'")
    if not root.is_dir():
        raise InputError(f"not a folder: '{root}'")
    return root


def detect_layout(root: Path) -> str:
    """The layout of the datasets under ``root`` (see the module docstring for the rules).

    Raises:
        InputError: ``root`` is missing or not a folder, or no layout matches (the message
            lists what was looked for).
    """
    root = _check_root(root)
    for layout in _DETECT_ORDER:
        if _FINDERS[layout](root).units:
            return layout
    looked = "; ".join(f"{lay}: {_EXPECTED[lay]}" for lay in _DETECT_ORDER)
    raise InputError(
        f"no known dataset layout in '{root}' (looked in it and one level down for {looked})"
    )


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


def _walk_images(folder: Path) -> list[tuple[str, Path]]:
    """``(relative stem, path)`` of every image file under ``folder``, sorted, hidden ones out."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for fn in filenames:
            if fn.startswith("."):
                continue
            stem, ext = os.path.splitext(fn)
            if ext.lower() not in IMAGE_SUFFIXES or not stem:
                continue
            rel = (rel_dir / stem).as_posix()
            out.append((rel, Path(dirpath) / fn))
    out.sort(key=lambda t: (t[0], t[1].name))
    return out


def _oriented_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header, after the EXIF orientation; never decodes pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning and PIL's header complaints
        with Image.open(path) as im:
            w, h = im.size
            try:
                # The base-class getexif reads what the header gave (PNG's override would
                # decode the whole image to look for a trailing eXIf chunk).
                orientation = Image.Image.getexif(im).get(0x0112, 1)
            except Exception:
                orientation = 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


def _header_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"unreadable header ({text})"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _build(unit: _Unit, layout: str) -> SegmentationDataset:
    images = [(s, p) for s, p in _walk_images(unit.image_dir) if not unit.ignore(p.stem)]
    masks = [(unit.mask_key(s), p) for s, p in _walk_images(unit.mask_dir) if not unit.ignore(p.stem)]
    if not images:
        raise InputError(f"no images found in '{unit.image_dir}'")
    if not masks:
        raise InputError(f"no masks found in '{unit.mask_dir}'")

    skipped: list[tuple[str, str]] = []
    img_by: dict[str, list[Path]] = {}
    for s, p in images:
        img_by.setdefault(s, []).append(p)
    msk_by: dict[str, list[Path]] = {}
    for s, p in masks:
        msk_by.setdefault(s, []).append(p)

    def rel(p: Path) -> str:
        return _rel(p, unit.root)

    samples: list[Sample] = []
    for stem in sorted(img_by):
        ips = img_by[stem]
        mps = msk_by.get(stem, [])
        if len(ips) > 1:
            for p in ips:
                skipped.append((rel(p), f"ambiguous: {len(ips)} images named '{stem}.*'"))
            for p in mps:
                skipped.append((rel(p), f"ambiguous: {len(ips)} images named '{stem}.*'"))
            continue
        ip = ips[0]
        if not mps:
            skipped.append((rel(ip), "no mask"))
            continue
        if len(mps) > 1:
            skipped.append((rel(ip), f"ambiguous: {len(mps)} masks for it"))
            for p in mps:
                skipped.append((rel(p), f"ambiguous: {len(mps)} masks for image '{stem}'"))
            continue
        mp = mps[0]
        try:
            isize = _oriented_size(ip)
        except Exception as e:  # PIL raises many types on malformed headers
            skipped.append((rel(ip), _header_reason(e)))
            continue
        try:
            msize = _oriented_size(mp)
        except Exception as e:
            skipped.append((rel(mp), _header_reason(e)))
            continue
        if isize != msize:
            skipped.append(
                (
                    rel(ip),
                    f"size mismatch: image {isize[0]}x{isize[1]}, "
                    f"mask {msize[0]}x{msize[1]} ({rel(mp)})",
                )
            )
            continue
        samples.append(Sample(stem, ip, mp))
    for stem in sorted(set(msk_by) - set(img_by)):
        for p in msk_by[stem]:
            skipped.append((rel(p), "no image"))
    skipped.sort()
    return SegmentationDataset(unit.name, unit.root, layout, samples, skipped)


def _unique_names(units: list[_Unit]) -> None:
    """Give units with the same name their parent folder's name in front."""
    counts: dict[str, int] = {}
    for u in units:
        counts[u.name] = counts.get(u.name, 0) + 1
    for u in units:
        if counts[u.name] > 1:
            u.name = f"{u.root.parent.name}/{u.name}" if u.root.parent.name else str(u.root)
    seen: dict[str, int] = {}
    for u in units:  # still clashing (same parent names): number them
        n = seen.get(u.name, 0)
        seen[u.name] = n + 1
        if n:
            u.name = f"{u.name}#{n + 1}"


def open_datasets(root: Path, layout: str | None = None) -> list[SegmentationDataset]:
    """Open every dataset of ``layout`` (detected when ``None``) found under ``root``.

    Returns:
        The datasets sorted by name, each with its samples sorted by name and the files it
        skipped (see the module docstring).

    Raises:
        InputError: ``root`` missing, an unknown layout, no dataset of that layout under
            ``root`` ("folder not found: ..." when an image folder's mask folder is missing),
            or an image folder without images / mask folder without masks.
    """
    root = _check_root(root)
    if layout is None:
        layout = detect_layout(root)
    elif not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise InputError(f"unknown dataset layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    layout = layout.lower()
    found = _FINDERS[layout](root)
    if not found.units:
        if found.missing:
            raise InputError(f"folder not found: '{found.missing[0]}' ({layout} layout)")
        raise InputError(
            f"no {layout} dataset in '{root}': looked in it and one level down for "
            f"{_EXPECTED[layout]}"
        )
    _unique_names(found.units)
    datasets = [_build(u, layout) for u in found.units]
    datasets.sort(key=lambda d: d.name)
    return datasets


# --------------------------------------------------------------------------------------------
# Seeded train/test splits
# --------------------------------------------------------------------------------------------

#: The parts a ``:split=`` suffix can name.
SPLITS: tuple[str, ...] = ("train", "test")
#: Share of a dataset's pairs in its test part (rounded to the nearest whole pair).
SPLIT_TEST_FRACTION: float = 0.2
#: Seed of the split's permutation (fixed: the test part must be the same on every machine).
SPLIT_SEED: int = 0

_SPLIT_SUFFIX = re.compile(r"(?i):split=([A-Za-z0-9_-]*)$")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``PATH[:LAYOUT][:split=train|test]`` argument (``split`` None: the whole dataset)."""

    path: Path
    layout: str | None
    split: str | None


def parse_data_spec(arg: str) -> DataSpec:
    """Parse ``PATH[:LAYOUT][:split=train|test]``: the split suffix, then :func:`parse_data_arg`.

    Raises:
        InputError: an unknown split name, or what :func:`parse_data_arg` raises.
    """
    if not isinstance(arg, str):
        arg = os.fsdecode(arg)
    split = None
    m = _SPLIT_SUFFIX.search(arg)
    if m and not Path(arg).expanduser().exists():
        split = m.group(1).lower()
        if split not in SPLITS:
            raise InputError(f"unknown split {m.group(1)!r} in {arg!r}: expected split=train or split=test")
        arg = arg[: m.start()]
        if not arg:
            raise InputError("empty data path before ':split=': expected PATH[:LAYOUT]:split=train|test")
    path, layout = parse_data_arg(arg)
    return DataSpec(path, layout, split)


def _split_key(name: str) -> bytes:
    return hashlib.sha256(f"basam-split\0{SPLIT_SEED}\0{name}".encode("utf-8")).digest()


def split_samples(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(train, test)`` names of a dataset's pairs (see "Splits" in the module docstring).

    Deterministic, disjoint, and together every name once; each part in sorted order.
    """
    ordered = sorted(set(names))
    perm = sorted(ordered, key=lambda n: (_split_key(n), n))  # ties (never, for SHA-256) by name
    n_test = int(round(SPLIT_TEST_FRACTION * len(ordered)))
    test = set(perm[:n_test])
    return [n for n in ordered if n not in test], [n for n in ordered if n in test]


def apply_split(ds: SegmentationDataset, split: str | None) -> SegmentationDataset:
    """The ``split`` part of ``ds`` (a new dataset named ``<name>-<split>``); ``ds`` for None."""
    if split is None:
        return ds
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    train, test = split_samples(s.name for s in ds.samples)
    keep = set(train if split == "train" else test)
    return SegmentationDataset(f"{ds.name}-{split}", ds.root, ds.layout, [s for s in ds.samples if s.name in keep],
                               list(ds.skipped))


def open_data_spec(arg: str) -> list[SegmentationDataset]:
    """Open the datasets a ``PATH[:LAYOUT][:split=train|test]`` argument names, each split."""
    spec = parse_data_spec(arg)
    return [apply_split(d, spec.split) for d in open_datasets(spec.path, spec.layout)]
