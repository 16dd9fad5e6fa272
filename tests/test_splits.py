import pytest

from busdx.data.index import load_index
from busdx.data.splits import (
    SplitConfig,
    make_split,
    overlapping_patients,
    patient_folds,
    split_train_val,
)


def _assert_patient_wise(index, n_folds):
    for fold in range(1, n_folds + 1):
        split = make_split(index, SplitConfig(test_fold=fold))
        assert overlapping_patients(split) == set()
        parts = split.parts()
        ids = [r.id for part in parts.values() for r in part]
        assert len(ids) == len(set(ids)) == len(index)
        assert all(r.fold == fold for r in split.test) or split.source == "generated"
        assert split.train and split.test


def test_fixture_splits_are_patient_wise_for_every_fold(fixtures_root):
    _assert_patient_wise(load_index(fixtures_root), 5)


def test_generated_folds_without_fold_file(fixtures_root, tmp_path):
    import shutil

    root = tmp_path / "busbra"
    shutil.copytree(fixtures_root, root)
    (root / "5-fold-cv.csv").unlink()
    index = load_index(root)
    assert index.n_folds is None
    folds = patient_folds(index.records, 5, seed=0)
    assert folds == patient_folds(index.records, 5, seed=0)  # seeded
    assert set(folds.values()) == {1, 2, 3, 4, 5}
    split = make_split(index, SplitConfig(test_fold=2))
    assert split.source == "generated"
    assert overlapping_patients(split) == set()


def test_official_valid_columns_are_not_trusted_and_val_is_by_patient(fixtures_root):
    index = load_index(fixtures_root)
    rest = [r for r in index if r.fold != 5]
    train, val = split_train_val(rest, 0.3, seed=0)
    assert {r.patient for r in train}.isdisjoint({r.patient for r in val})
    # stratified: both classes on both sides
    assert {r.label for r in train} == {r.label for r in val} == {0, 1}


def test_bad_test_fold(fixtures_root):
    with pytest.raises(ValueError, match="test fold"):
        make_split(load_index(fixtures_root), SplitConfig(test_fold=9))


@pytest.mark.full_data
def test_full_dataset_splits_are_patient_wise_and_stratified(busbra_root):
    index = load_index(busbra_root)
    _assert_patient_wise(index, 5)
    split = make_split(index, SplitConfig(test_fold=5))
    assert len(split.test) == 383
    for part in (split.train, split.val):
        share = sum(r.label for r in part) / len(part)
        assert 0.29 < share < 0.36


def test_a_validation_fold_covers_the_training_folds_once(fixtures_root):
    index = load_index(fixtures_root)
    folds = sorted({r.fold for r in index} - {5})
    seen = []
    for k in folds:
        split = make_split(index, SplitConfig(test_fold=5, val_fold=k))
        assert {r.fold for r in split.val} == {k} and k not in {r.fold for r in split.train}
        assert overlapping_patients(split) == set() and {r.fold for r in split.test} == {5}
        seen += [r.id for r in split.val]
    # cross-validation: every image outside the test fold validates exactly once
    assert sorted(seen) == sorted(r.id for r in index if r.fold != 5)
    for bad in (5, 0, 6):
        with pytest.raises(ValueError, match="validation fold"):
            make_split(index, SplitConfig(test_fold=5, val_fold=bad))
