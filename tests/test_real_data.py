"""The real Tiny ImageNet, when TINYLIB_DATA names it (CI always does)."""

import numpy as np
import pytest

from tinylib import data, profiles

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real(real_data_path):
    return data.load()


def test_official_split_sizes(real):
    assert real.num_classes == 200
    assert len(real.train) == 100_000 and len(real.val) == 10_000
    assert np.bincount(real.train.labels, minlength=200).tolist() == [500] * 200
    assert np.bincount(real.val.labels, minlength=200).tolist() == [50] * 200


def test_every_image_is_64x64_rgb(real):
    for split in (real.train, real.val):
        assert split.images.shape[1:] == (64, 64, 3) and split.images.dtype == np.uint8
    # the ~2% grayscale JPEGs were expanded to three equal channels
    sample = real.train.images[::50]
    grey = (sample[..., 0] == sample[..., 1]).all(axis=(1, 2)) & (sample[..., 1] == sample[..., 2]).all(axis=(1, 2))
    assert 0.005 < grey.mean() < 0.05


def test_class_names_come_from_words(real):
    assert real.class_names[real.wnids.index("n01443537")] == "goldfish"
    assert real.words[real.wnids.index("n01443537")].startswith("goldfish, Carassius auratus")


def test_val_labels_come_from_the_annotations(real):
    assert real.val.files[0] == "val_0.JPEG"
    assert real.wnids[real.val.labels[0]] == "n03444034"  # first line of val_annotations.txt


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_profile_subsets_on_real_data(real, name):
    profile = profiles.get_profile(name)
    subset = real.subset(**profile.subset_kwargs())
    assert subset.num_classes == profile.classes
    assert len(subset.train) == profile.classes * profile.train_per_class
    assert len(subset.val) == profile.classes * profile.val_per_class
