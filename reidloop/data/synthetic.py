"""The built-in synthetic Re-ID set: real PNG files in a Market-1501-like layout.

Image model (all numpy, vectorised over images):

* **Identity** (the signal). Every person is a pedestrian-like figure: a head
  (skin tone, hair colour), a torso (colour from a small palette, short or long
  sleeves, a pattern: none / horizontal stripes of id-specific frequency / chest
  logo / vertical two-tone / horizontal two-tone), legs (palette colour, trousers
  or shorts), shoes, an optional side bag, and body width / height proportions.
  The palettes are small, so many ids share a torso or leg colour and differ
  only in another attribute; the discrete attribute tuple is unique per id and
  colours get a small per-id jitter. Similarity between ids is thus controlled.
* **Camera** (the nuisance). Each camera has a global illumination gain, a
  per-channel colour cast, a horizontal light gradient, a background (colour,
  vertical gradient, sinusoidal texture), a typical viewpoint (figure scale and
  vertical position: some cameras see people smaller / higher up) and possibly
  blur. Gains and scales are spread evenly over the cameras, so cameras differ.
* **Image** (the noise). Per image: position and scale jitter, leg spread,
  horizontal flip (bag side and two-tone halves swap), brightness, background
  texture phase, up to two clutter boxes behind the person, occasional partial
  occlusion in front of the person, Gaussian noise.

Camera bias dominates raw pixels: same-camera images of other people share the
background, cast and viewpoint, so raw-pixel (or untrained-CNN) cross-camera
ranking is poor, while the identity attributes are learnable by a small CNN.

Layout under ``<cache_dir or ".cache">/synthetic-<hash>/``: ``bounding_box_train/``,
``query/``, ``bounding_box_test/`` with files ``PPPP_cC_NNNN.png`` (pid, 1-based
camera, running image index). Train pids are ``1..train_ids``; test pids follow.
The folder is built under a temporary name, gets a ``DONE`` marker last and is then
renamed into place, so a half-written folder is never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from reidloop.config.schema import SyntheticConfig
from reidloop.data.records import DatasetError, ImageRecord, ReidSplits

GENERATOR_VERSION = 2  # bump when the image model changes: old caches are then not reused
SUBDIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_CHUNK = 1024  # images rendered at once (bounds memory for large configs)

_SKIN = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.53], [0.67, 0.46, 0.33], [0.45, 0.30, 0.21]])
_HAIR = np.array([[0.08, 0.07, 0.06], [0.35, 0.22, 0.12], [0.85, 0.72, 0.40], [0.60, 0.60, 0.60]])
_TOP = np.array([[0.92, 0.92, 0.90], [0.12, 0.12, 0.14], [0.78, 0.14, 0.16], [0.18, 0.30, 0.75],
                 [0.20, 0.55, 0.25], [0.92, 0.80, 0.18], [0.52, 0.52, 0.54], [0.92, 0.55, 0.68]])
_LEGS = np.array([[0.10, 0.10, 0.12], [0.16, 0.22, 0.42], [0.45, 0.58, 0.78], [0.72, 0.64, 0.45],
                  [0.50, 0.50, 0.52], [0.45, 0.30, 0.18]])
_SHOES = np.array([[0.08, 0.08, 0.08], [0.90, 0.90, 0.90], [0.50, 0.28, 0.15]])
_ACCENT = np.concatenate([_TOP, [[0.95, 0.50, 0.10], [0.40, 0.78, 0.90]]])  # pattern and bag colours
_N_PATTERNS = 5  # none, stripes, logo, vertical two-tone, horizontal two-tone


@dataclass
class _Identities:
    skin: np.ndarray  # (I, 3) colours in [0, 1]
    hair: np.ndarray
    top: np.ndarray
    legs: np.ndarray
    shoes: np.ndarray
    accent: np.ndarray
    bag_col: np.ndarray
    pattern: np.ndarray  # (I,) int in [0, _N_PATTERNS)
    stripe_freq: np.ndarray  # (I,) float, stripes per torso height
    long_sleeves: np.ndarray  # (I,) bool
    shorts: np.ndarray  # (I,) bool
    bag: np.ndarray  # (I,) int: 0 none, 1 right, -1 left
    width: np.ndarray  # (I,) body width factor
    height: np.ndarray  # (I,) body height factor


def _identities(n: int, rng: np.random.Generator) -> _Identities:
    """Draw ``n`` persons whose discrete attribute tuples are pairwise distinct."""
    sizes = np.array([len(_SKIN), len(_HAIR), len(_TOP), len(_LEGS), _N_PATTERNS, 3, len(_ACCENT), 2, 2, 3])
    cand = 4 * n + 64
    codes = np.stack([rng.integers(0, s, cand) for s in sizes], axis=1)
    # stripe frequency only matters for stripes, the accent colour only with a pattern
    codes[:, 5] = np.where(codes[:, 4] == 1, codes[:, 5], 0)
    codes[:, 6] = np.where(codes[:, 4] == 0, 0, codes[:, 6])
    codes[:, 6] = np.where(codes[:, 6] == codes[:, 2], (codes[:, 6] + 1) % len(_ACCENT), codes[:, 6])
    _, first = np.unique(codes, axis=0, return_index=True)
    if len(first) < n:
        raise ValueError(f"synthetic: cannot draw {n} distinct identities (at most about {sizes.prod()})")
    c = codes[np.sort(first)[:n]]

    def jit(palette: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.clip(palette[idx] + rng.normal(0.0, 0.035, (n, 3)), 0.0, 1.0)

    return _Identities(
        skin=jit(_SKIN, c[:, 0]), hair=jit(_HAIR, c[:, 1]), top=jit(_TOP, c[:, 2]), legs=jit(_LEGS, c[:, 3]),
        shoes=jit(_SHOES, rng.integers(0, len(_SHOES), n)), accent=jit(_ACCENT, c[:, 6]),
        bag_col=jit(_ACCENT, rng.integers(0, len(_ACCENT), n)),
        pattern=c[:, 4], stripe_freq=2.0 + c[:, 5], long_sleeves=c[:, 7] == 1, shorts=c[:, 8] == 1,
        bag=np.array([0, 1, -1])[c[:, 9]],
        width=rng.uniform(0.85, 1.2, n), height=rng.uniform(0.88, 1.0, n))


@dataclass
class _Cameras:
    gain: np.ndarray  # (C,)
    cast: np.ndarray  # (C, 3) per-channel gain
    light: np.ndarray  # (C,) horizontal light gradient
    bg: np.ndarray  # (C, 3) background colour at the top
    floor: np.ndarray  # (C, 3) background colour at the bottom
    tex_freq: np.ndarray  # (C, 2) texture frequency (y, x) in cycles per image
    tex_amp: np.ndarray  # (C,)
    scale: np.ndarray  # (C,) figure height / image height
    bottom: np.ndarray  # (C,) figure foot position / image height
    blur: np.ndarray  # (C,) bool: 3x3 box blur


def _tinted(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) background colours: a grey level plus a moderate colour tint."""
    return np.clip(rng.uniform(0.25, 0.75, (n, 1)) + rng.uniform(-0.15, 0.15, (n, 3)), 0.0, 1.0)


def _cameras(n: int, rng: np.random.Generator) -> _Cameras:
    """Draw ``n`` cameras; gains and viewpoints are spread evenly, then shuffled."""
    return _Cameras(
        gain=rng.permutation(np.linspace(0.75, 1.15, n)), cast=rng.uniform(0.8, 1.2, (n, 3)),
        light=rng.uniform(-0.3, 0.3, n), bg=_tinted(rng, n), floor=_tinted(rng, n),
        tex_freq=rng.uniform(1.0, 4.0, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2)), tex_amp=rng.uniform(0.04, 0.12, n),
        scale=rng.permutation(np.linspace(0.92, 0.72, n)), bottom=rng.uniform(0.9, 0.99, n),
        blur=rng.permutation(np.arange(n) % 2 == 1))


@dataclass
class SyntheticLayout:
    """Who is in which image: one entry per image, in file-index order."""

    pid: np.ndarray  # (N,) person id (1-based)
    cam: np.ndarray  # (N,) 0-based camera
    split: np.ndarray  # (N,) "train" / "query" / "gallery"
    names: list[str]


def _layout(cfg: SyntheticConfig, rng: np.random.Generator) -> SyntheticLayout:
    """Every id has ``images_per_camera`` images in each camera; test ids give one query per camera
    (chosen by ``rng``), the rest is gallery. With one image per camera, one camera per test id is query."""
    n_ids, c, k = cfg.train_ids + cfg.test_ids, cfg.cameras, cfg.images_per_camera
    pid = np.repeat(np.arange(1, n_ids + 1), c * k)
    cam = np.tile(np.repeat(np.arange(c), k), n_ids)
    slot = np.tile(np.arange(k), n_ids * c)
    if k > 1:
        q_slot = rng.integers(0, k, (n_ids, c))
        is_query = slot == q_slot[pid - 1, cam]
    else:
        is_query = cam == rng.integers(0, c, n_ids)[pid - 1]
    split = np.where(pid <= cfg.train_ids, "train", np.where(is_query, "query", "gallery"))
    names = [f"{p:04d}_c{q + 1}_{i:04d}.png" for i, (p, q) in enumerate(zip(pid.tolist(), cam.tolist()))]
    return SyntheticLayout(pid=pid, cam=cam, split=split, names=names)


def _image_params(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image nuisance draws, all at once so the result does not depend on the chunk size."""
    occluded = rng.random(n) < 0.2
    return dict(
        dx=rng.normal(0.0, 0.06, n), dy=rng.normal(0.0, 0.025, n), scale=rng.uniform(0.93, 1.07, n),
        spread=rng.uniform(0.0, 0.6, n), flip=rng.random(n) < 0.5, bright=rng.uniform(0.85, 1.15, n),
        phase=rng.uniform(0.0, 2 * np.pi, (n, 2)), noise=rng.uniform(0.01, 0.04, n),
        clutter=rng.random((n, 2)) < 0.5, clutter_box=rng.uniform(0.0, 1.0, (n, 2, 4)),
        clutter_col=rng.uniform(0.1, 0.9, (n, 2, 3)),
        occ=occluded, occ_side=rng.integers(0, 3, n), occ_frac=rng.uniform(0.2, 0.4, n),
        occ_col=rng.uniform(0.1, 0.9, (n, 3)))


# part labels, in painter order (later ones cover earlier ones)
_BG, _CLUTTER0, _CLUTTER1, _LEGS_L, _LEG_SKIN, _SHOES_L, _TOP_L, _ACCENT_L, _SKIN_L, _HAIR_L, _BAG_L, _OCC = range(12)


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur of (B, H, W, 3), separable, edges replicated."""
    h, w = img.shape[1:3]
    p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    p = (p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]) / 3.0
    return (p[:, :-2] + p[:, 1:-1] + p[:, 2:])[:, :h, :w] / 3.0


def _render(ids: _Identities, cams: _Cameras, pid_idx: np.ndarray, cam: np.ndarray,
            p: dict[str, np.ndarray], height: int, width: int, noise_rng: np.random.Generator) -> np.ndarray:
    """Render a batch (B,) of images as uint8 (B, H, W, 3): a part-label map, then one colour lookup."""
    b, f32 = len(pid_idx), np.float32
    y = (np.arange(height, dtype=f32)[None, :, None] + 0.5) / height  # (1, H, 1), in image heights
    x = (np.arange(width, dtype=f32)[None, None, :] + 0.5) / height  # (1, 1, W), in image heights
    xr = x * f32(height / width)  # in image widths
    col = lambda a: np.asarray(a, dtype=a.dtype if a.dtype.kind in "bi" else f32)[:, None, None]  # noqa: E731

    label = np.zeros((b, height, width), dtype=np.int8)
    for j in range(2):  # clutter boxes behind the person
        bx = p["clutter_box"][:, j]
        x0, y0 = bx[:, 0] * 0.9, bx[:, 2] * 0.7
        box = ((xr >= col(x0)) & (xr < col(x0 + 0.1 + 0.3 * bx[:, 1])) & (y >= col(y0))
               & (y < col(y0 + 0.2 + 0.5 * bx[:, 3])) & col(p["clutter"][:, j]))
        label[box] = _CLUTTER0 + j

    # figure coordinates: v in [0, 1] from head top to feet, u = +-1 at the torso edges
    fh = cams.scale[cam] * ids.height[pid_idx] * p["scale"]  # figure height in image heights
    foot = cams.bottom[cam] + p["dy"]
    cx = (0.5 + p["dx"]) * width / height
    v = (y - col(foot - fh)) / col(fh)
    u = (x - col(cx)) / col(0.12 * fh * ids.width[pid_idx])
    u = np.where(col(p["flip"]), -u, u)
    au = np.abs(u)

    legs_top, legs_len = 0.55, 0.42
    leg_off = np.abs(au - (0.5 + col(p["spread"]) * np.clip(v - legs_top, 0, None) / legs_len))
    leg = (v >= legs_top) & (v < legs_top + legs_len) & (leg_off <= 0.42)
    label[leg] = _LEGS_L
    label[leg & col(ids.shorts[pid_idx]) & (v > legs_top + 0.2)] = _LEG_SKIN
    label[(v >= legs_top + legs_len) & (v <= 1.0) & (leg_off <= 0.5)] = _SHOES_L
    tv = (v - 0.16) / 0.41  # 0..1 over the torso
    torso = (tv >= 0) & (tv < 1) & (au <= 1.0 - 0.1 * tv)
    pat = col(ids.pattern[pid_idx])
    accent = ((pat == 1) & (np.sin(2 * np.pi * col(ids.stripe_freq[pid_idx]) * tv) > 0)
              | (pat == 2) & (au < 0.45) & (np.abs(tv - 0.3) < 0.14)
              | (pat == 3) & (u < 0)
              | (pat == 4) & (tv > 0.55))
    label[torso] = _TOP_L
    label[torso & accent] = _ACCENT_L
    arm = (v >= 0.17) & (v < 0.52) & (au > 1.0) & (au <= 1.32)
    label[arm] = _TOP_L
    label[arm & (v >= col(np.where(ids.long_sleeves[pid_idx], 0.52, 0.28)))] = _SKIN_L
    head = ((v - 0.085) / 0.078) ** 2 + (u / 0.6) ** 2 <= 1.0
    label[head] = _SKIN_L
    label[head & (v < 0.06)] = _HAIR_L
    side = col(ids.bag[pid_idx])
    label[(side != 0) & (u * side > 1.15) & (u * side <= 1.8) & (v >= 0.36) & (v < 0.6)] = _BAG_L
    figure = label >= _LEGS_L
    f = col(p["occ_frac"])  # occluder in front: from the bottom, the left or the right of the image
    occ = np.stack(np.broadcast_arrays(y > 1 - 1.5 * f, xr < f, xr > 1 - f))[p["occ_side"], np.arange(b)]
    label[occ & col(p["occ"])] = _OCC

    # colours: per-image table (B, 12, 3) looked up by label; background = gradient x texture
    table = np.zeros((b, 12, 3), dtype=f32)
    table[:, _CLUTTER0], table[:, _CLUTTER1] = p["clutter_col"][:, 0], p["clutter_col"][:, 1]
    for lab, colours in ((_LEGS_L, ids.legs), (_LEG_SKIN, ids.skin), (_SHOES_L, ids.shoes), (_TOP_L, ids.top),
                         (_ACCENT_L, ids.accent), (_SKIN_L, ids.skin), (_HAIR_L, ids.hair), (_BAG_L, ids.bag_col)):
        table[:, lab] = colours[pid_idx]
    table[:, _OCC] = p["occ_col"]
    img = table[np.arange(b)[:, None, None], label]
    t = y[..., None]
    bg = (1 - t) * cams.bg[cam][:, None, None, :].astype(f32) + t * cams.floor[cam][:, None, None, :].astype(f32)
    tex = (np.sin(2 * np.pi * col(cams.tex_freq[cam, 0]) * y + col(p["phase"][:, 0]))
           * np.sin(2 * np.pi * col(cams.tex_freq[cam, 1]) * xr + col(p["phase"][:, 1])))
    img = np.where((label == _BG)[..., None], bg * (1 + col(cams.tex_amp[cam]) * tex)[..., None], img)

    # shading of the round body, camera photometry (gain, cast, light gradient), brightness, blur, noise
    shade = np.where(figure, 1.0 - 0.12 * np.clip(au, 0.0, 1.5) ** 2, 1.0)
    light = 1 + col(cams.light[cam]) * (xr - 0.5)
    img *= (shade * light * col(cams.gain[cam] * p["bright"]))[..., None]
    img *= cams.cast[cam][:, None, None, :].astype(f32)
    blur = np.flatnonzero(cams.blur[cam])
    img[blur] = _box_blur(img[blur])
    img += noise_rng.standard_normal(img.shape, dtype=f32) * col(p["noise"])[..., None]
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per aspect, so e.g. the layout can be rebuilt without rendering."""
    names = ("ids", "cameras", "layout", "images", "noise")
    return dict(zip(names, map(np.random.default_rng, np.random.SeedSequence(seed).spawn(len(names)))))


def render_synthetic(cfg: SyntheticConfig) -> tuple[np.ndarray, SyntheticLayout]:
    """All images of ``cfg`` as uint8 (N, H, W, 3) plus their layout; deterministic for ``cfg.seed``."""
    rng = _streams(cfg.seed)
    ids = _identities(cfg.train_ids + cfg.test_ids, rng["ids"])
    cams = _cameras(cfg.cameras, rng["cameras"])
    layout = _layout(cfg, rng["layout"])
    params = _image_params(len(layout.pid), rng["images"])
    out = np.empty((len(layout.pid), cfg.height, cfg.width, 3), dtype=np.uint8)
    for lo in range(0, len(out), _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        out[sl] = _render(ids, cams, layout.pid[sl] - 1, layout.cam[sl], {k: a[sl] for k, a in params.items()},
                          cfg.height, cfg.width, rng["noise"])
    return out, layout


def config_hash(cfg: SyntheticConfig) -> str:
    """Short hash of the config and the generator version: the cache folder's suffix."""
    blob = json.dumps({"generator_version": GENERATOR_VERSION, **asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _complete(folder: str, layout: SyntheticLayout) -> bool:
    if not os.path.isfile(os.path.join(folder, "DONE")):
        return False
    present = {s: set(os.listdir(os.path.join(folder, d))) if os.path.isdir(os.path.join(folder, d)) else set()
               for s, d in SUBDIRS.items()}
    return all(n in present[s] for n, s in zip(layout.names, layout.split.tolist()))


def _write(folder: str, cfg: SyntheticConfig) -> None:
    """Render and write all images into ``folder`` (new), then the DONE marker."""
    images, layout = render_synthetic(cfg)
    for d in SUBDIRS.values():
        os.makedirs(os.path.join(folder, d))
    for img, name, split in zip(images, layout.names, layout.split.tolist()):
        Image.fromarray(img).save(os.path.join(folder, SUBDIRS[split], name), format="PNG", compress_level=1)
    with open(os.path.join(folder, "DONE"), "w") as fh:
        json.dump({"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "images": len(images)}, fh)


def synthetic_splits(cfg: SyntheticConfig, cache_dir: str | None = None) -> ReidSplits:
    """Generate (or reuse) the synthetic set under ``<cache_dir or ".cache">/synthetic-<hash>/``.

    The folder is built under a temporary name and renamed into place once its ``DONE``
    marker is written, so concurrent callers (e.g. Ray workers) never see a partial set;
    a folder without the marker (or with files missing) is rebuilt.
    """
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"synthetic_splits: cfg must be a SyntheticConfig, got {type(cfg).__name__}")
    root = os.path.abspath(cache_dir if cache_dir is not None else ".cache")
    folder = os.path.join(root, f"synthetic-{config_hash(cfg)}")
    layout = _layout(cfg, _streams(cfg.seed)["layout"])
    generated = False
    if not _complete(folder, layout):
        tmp = os.path.join(root, f".{os.path.basename(folder)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(root, exist_ok=True)
            _write(tmp, cfg)
            if os.path.exists(folder) and not _complete(folder, layout):
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(tmp, folder)
                generated = True
            except OSError:  # another process renamed its complete copy first
                if not _complete(folder, layout):
                    raise
        except OSError as e:
            raise DatasetError(f"{folder}: cannot write the synthetic set ({e})") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    recs: dict[str, list[ImageRecord]] = {s: [] for s in SUBDIRS}
    for name, pid, cam, split in zip(layout.names, layout.pid.tolist(), layout.cam.tolist(), layout.split.tolist()):
        recs[split].append(ImageRecord(path=os.path.join(folder, SUBDIRS[split], name), pid=pid, camid=cam))
    splits = ReidSplits(name="synthetic", train=recs["train"], query=recs["query"], gallery=recs["gallery"],
                        meta={"root": folder, "generated": generated, "config": asdict(cfg),
                              "generator_version": GENERATOR_VERSION})
    splits.check_nonempty(folder)
    return splits
