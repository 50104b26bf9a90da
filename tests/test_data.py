"""The offline data set: deterministic, balanced, varied, and loadable by both frameworks."""
import hashlib

import numpy as np
import pytest

from conftest import run_python
from course import data


def digest(X):
    return hashlib.sha256(X.tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes():
    X1, y1 = data.load_task("target", "train", per_class=4, seed=3)
    X2, y2 = data.load_task("target", "train", per_class=4, seed=3)
    X3, _ = data.load_task("target", "train", per_class=4, seed=4)
    assert digest(X1) == digest(X2) and (y1 == y2).all()
    assert digest(X1) != digest(X3)


@pytest.mark.parametrize("task,n_classes", [("source", 10), ("target", 5), ("dissimilar", 5)])
def test_shapes_and_balance(task, n_classes):
    X, y = data.load_task(task, "train", per_class=6)
    assert X.shape == (6 * n_classes, 96, 96, 3) and X.dtype == np.uint8
    assert np.bincount(y, minlength=n_classes).tolist() == [6] * n_classes
    assert len(data.class_names(task)) == n_classes


def test_default_split_sizes_and_settable_train_size():
    assert len(data.load_task("target", "train")[1]) == 5 * 10
    assert len(data.load_task("target", "test")[1]) == 5 * 40
    assert len(data.load_task("target", "train", per_class=20)[1]) == 5 * 20


def test_target_classes_are_new():
    assert not set(data.TARGET_CLASSES) & set(data.SOURCE_CLASSES)


def test_splits_share_no_image():
    train, _ = data.load_task("target", "train", per_class=10)
    test, _ = data.load_task("target", "test", per_class=10)
    assert not {digest(x) for x in train} & {digest(x) for x in test}


def test_images_vary_in_colour_position_and_background():
    X, y = data.load_task("target", "train", per_class=20)
    same_class = X[y == 0].astype(float)
    # background and shape colours differ between images of one class
    assert same_class.mean(axis=(1, 2)).std(axis=0).min() > 10
    # no two images are identical, and per-pixel noise is present
    assert len({digest(x) for x in X}) == len(X)
    assert np.abs(np.diff(same_class[0], axis=1)).mean() > 3


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="unknown task"):
        data.load_task("cats")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_task("target", "holdout")


def test_augment_turns_and_mirrors_without_changing_the_dots():
    X, y = data.load_task("dissimilar", "train", per_class=4)
    A = data.augment(X, seed=1)
    assert A.shape == X.shape and A.dtype == X.dtype
    assert digest(A) == digest(data.augment(X, seed=1)) and digest(A) != digest(data.augment(X, seed=2))
    for original, copy in zip(X, A):  # each copy is one of the 8 turns and mirror images of its original
        variants = [np.rot90(original, k) for k in range(4)]
        variants += [v[:, ::-1] for v in variants]
        assert any(np.array_equal(copy, v) for v in variants)
    assert not all(np.array_equal(a, x) for a, x in zip(A, X))


def test_own_images_load_with_image_dataset_from_directory(tmp_path):
    data.write_image_folder(tmp_path / "imgs", "target", "train", per_class=3)
    result = run_python(f"""
        from course import keras_tools
        ds = keras_tools.load_image_folder({str(tmp_path / "imgs")!r}, batch_size=32)
        X, y = next(iter(ds))
        print(tuple(X.shape), tuple(y.shape), float(X.numpy().min()) >= -1, float(X.numpy().max()) <= 1)
        print(ds.class_names)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-3:-1] == ["(15, 96, 96, 3) (15, 5) True True",
                                                "['frame', 'l_shape', 'pentagon', 'semicircle', 'star6']"]


def test_own_images_load_with_imagefolder(tmp_path):
    data.write_image_folder(tmp_path / "imgs", "target", "train", per_class=3)
    result = run_python(f"""
        from course import torch_tools
        ds = torch_tools.image_folder({str(tmp_path / "imgs")!r})
        x, label = ds[0]
        print(len(ds), tuple(x.shape), ds.classes)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "15 (3, 96, 96) ['frame', 'l_shape', 'pentagon', 'semicircle', 'star6']"


def test_framework_views_hold_the_same_images():
    result = run_python("""
        import numpy as np
        from course import data, torch_tools
        ds = torch_tools.ShapesDataset("target", "train", per_class=2)
        X, y = data.load_task("target", "train", per_class=2)
        back = (ds.X * torch_tools.STD + torch_tools.MEAN).permute(0, 2, 3, 1).numpy() * 255
        print(np.abs(back - X).max() < 1e-3, (ds.y.numpy() == y).all(), len(ds))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True True 10"
    result = run_python("""
        import numpy as np
        from course import data, keras_tools
        X, y = keras_tools.load_arrays("target", "train", per_class=2)
        raw, labels = data.load_task("target", "train", per_class=2)
        print(np.allclose((X + 1) * 127.5, raw, atol=1e-3), (y.argmax(1) == labels).all(), X.dtype)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True True float32"
