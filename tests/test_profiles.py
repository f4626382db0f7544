"""tinylib.profiles: one place for smoke / quick / full."""

import pytest

from tinylib import profiles


def test_environment_variable_chooses_the_profile(monkeypatch):
    monkeypatch.setenv("TINYLIB_PROFILE", "smoke")
    assert profiles.get_profile().name == "smoke"
    assert profiles.get_profile("full").name == "full"  # an explicit name wins


def test_default_is_quick_on_a_cpu_and_full_on_a_gpu(monkeypatch):
    monkeypatch.delenv("TINYLIB_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "gpu_available", lambda: False)
    assert profiles.get_profile().name == "quick"
    monkeypatch.setattr(profiles, "gpu_available", lambda: True)
    assert profiles.get_profile().name == "full"


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="smoke, quick, full"):
        profiles.get_profile("huge")


def test_profiles_grow_from_smoke_to_full():
    smoke, quick, full = (profiles.PROFILES[n] for n in ("smoke", "quick", "full"))
    assert smoke.classes < quick.classes and full.classes is None
    assert smoke.train_per_class < quick.train_per_class <= 500
    assert full.subset_kwargs() == {"classes": None, "per_class": None, "val_per_class": None, "seed": 0}
    assert "100,000 train" in full.describe()


def test_per_model_epochs_override():
    quick = profiles.PROFILES["quick"]
    assert quick.epochs_for("no-such-model") == quick.epochs
    custom = profiles.Profile("x", 2, 2, 1, epochs=5, batch_size=2,
                              model_epochs=profiles.MappingProxyType({"model3": 2}))
    assert custom.epochs_for("model3") == 2 and custom.epochs_for("model1") == 5


def test_chapter_9s_batch_exercise_reads_true_of_the_profiles():
    """Chapter 9's exercise *Epochs, or steps?* says that quick's batch is Keras' default and
    that four times it is the full profile's: the prose holds only while the profiles do."""
    from tinylib import diagnose

    quick, full = profiles.get_profile("quick"), profiles.get_profile("full")
    assert quick.batch_size == diagnose.KERAS_DEFAULT_BATCH and full.batch_size == 4 * quick.batch_size


def test_the_profile_line_shows_the_epochs_and_batch_a_command_overrides():
    full = profiles.PROFILES["full"]
    assert full.describe().endswith("30 epochs, batch 128")
    assert full.describe(epochs=30, batch_size=128).endswith("30 epochs, batch 128")
    assert full.describe(epochs=12, batch_size=32).endswith(
        "12 epochs (the profile's: 30), batch 32 (the profile's: 128)")
    # A model's own epochs in the profile are the profile's, not an override (Model 2's cap).
    assert full.epochs_for("model2") == 100
    assert full.describe(model="model2").endswith("100 epochs (model2's in this profile; 30 for most models), batch 128")
    assert full.describe(epochs=100, model="model2").endswith("100 epochs (model2's in this profile; 30 for most "
                                                               "models), batch 128")
    assert full.describe(epochs=40, model="model2").endswith("40 epochs (the profile's: 100), batch 128")
    assert full.describe(model="model1").endswith("30 epochs, batch 128")


def test_the_profiles_table_gives_each_profiles_counts_with_none_meaning_all():
    from tinylib import profiles

    table = profiles.table()
    assert list(table.index) == list(profiles.PROFILES)
    full, smoke = table.loc["full"], table.loc["smoke"]
    assert (full["classes"], full["train images"], full["val images"]) == (200, 100_000, 10_000)
    chosen = profiles.PROFILES["smoke"]
    assert (smoke["classes"], smoke["train images"], smoke["val images"]) == (
        chosen.classes, chosen.classes * chosen.train_per_class, chosen.classes * chosen.val_per_class)
    assert smoke["batch"] == chosen.batch_size and smoke["what it is for"] == chosen.description
