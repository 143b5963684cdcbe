import numpy as np
import pytest

from defectkit.metrics import (
    binary_metrics,
    choose_threshold,
    classification_metrics,
    confusion_matrix,
    rates_at,
)


def test_confusion_and_per_class_by_hand():
    targets = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    assert confusion_matrix(targets, predicted, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = classification_metrics(targets, predicted, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1 -> balanced accuracy 13/18
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions 1, 1/2, 1/2; F1 of b = 2 * (1/2 * 1/2) / 1 = 1/2
    assert m["per_class"]["a"]["precision"] == 1.0
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_class_without_samples_is_left_out_of_balanced_accuracy():
    m = classification_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b"])
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["support"] == 0


# NG scores of 4 OK and 4 NG images, worked by hand
IS_NG = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
SCORE = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_thresholds_by_hand():
    # t=0.7: recall 3/4, spec 4/4 -> J=0.75; t=0.4: recall 1, spec 3/4 -> J=0.75 (first wins)
    assert choose_threshold(IS_NG, SCORE, "youden") == pytest.approx(0.7)
    # highest t with recall >= 1.0 is 0.4
    assert choose_threshold(IS_NG, SCORE, "recall", 1.0) == pytest.approx(0.4)
    # lowest t with specificity >= 1.0 is 0.7 (0.6 would let one OK through)
    assert choose_threshold(IS_NG, SCORE, "specificity", 1.0) == pytest.approx(0.7)


def test_rates_and_auc_by_hand():
    r = rates_at(IS_NG, SCORE, 0.5)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (3, 1, 3, 1)
    assert r["ng_f1"] == pytest.approx(0.75)
    # pairs (ng, ok) ranked right: 0.4 beats 3 of 4 OK, the others all 4 -> 15/16
    assert binary_metrics(IS_NG, SCORE)["auc"] == pytest.approx(15 / 16)


def test_one_class_only_gives_a_note_not_a_crash():
    assert "note" in binary_metrics(np.zeros(3, bool), np.array([0.1, 0.2, 0.3]))


def test_aupro_by_hand():
    from defectkit.metrics import aupro

    # one region of 2 pixels; sorted scores: 0.9 (defect), 0.8 (good), 0.2 (defect), 0.1 (good)
    # curve (fpr, pro): (0, .5), (.5, .5), (.5, 1), (1, 1): up to fpr 0.3 the overlap is 0.5
    mask, amap = np.array([[1, 1, 0, 0]]), np.array([[0.9, 0.2, 0.8, 0.1]])
    assert aupro([mask], [amap], max_fpr=0.3) == pytest.approx(0.5)
    assert aupro([mask], [amap], max_fpr=1.0) == pytest.approx(0.75)
    # two one-pixel regions, both above every good pixel: full overlap at zero false alarms
    assert aupro([np.array([[1, 0, 1]])], [np.array([[0.9, 0.1, 0.5]])]) == pytest.approx(1.0)


def test_pixel_auroc_by_hand_with_ties():
    from defectkit.metrics import pixel_auroc

    # defect pixels 0.9, 0.5; good pixels 0.5, 0.1, 0.1 over two images. Pairs (defect,
    # good): 0.9 beats all 3; 0.5 ties one (counts 1/2) and beats two -> (3 + 2.5) / 6
    masks = [np.array([[1, 0]]), np.array([[1, 0, 0]])]
    maps = [np.array([[0.9, 0.5]]), np.array([[0.5, 0.1, 0.1]])]
    assert pixel_auroc(masks, maps) == pytest.approx(5.5 / 6)
    assert pixel_auroc([np.array([[1, 1, 0]])], [np.array([[0.3, 0.3, 0.3]])]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both defect and defect-free"):
        pixel_auroc([np.zeros((2, 2))], [np.ones((2, 2))])


def test_pixel_auroc_matches_sklearn_on_many_ties():
    from sklearn.metrics import roc_auc_score

    from defectkit.metrics import pixel_auroc

    rng = np.random.default_rng(0)
    masks = [rng.random((30, 40)) < 0.2 for _ in range(3)]
    maps = [np.round(rng.random((30, 40)) + m * 0.3, 1) for m in masks]  # few distinct values
    expected = roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])
    )
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_ranking_subsets_equal_their_own_ranking():
    from defectkit.metrics import PixelRanking

    rng = np.random.default_rng(1)
    masks = [rng.random((20, 20)) < f for f in (0.1, 0.0, 0.3, 0.05)]
    maps = [np.round(rng.random((20, 20)) + m * 0.5, 2) for m in masks]
    ranking = PixelRanking(masks, maps)
    for images in ([0, 1], [0, 2, 3], [2]):
        alone = PixelRanking([masks[i] for i in images], [maps[i] for i in images])
        assert ranking.auroc(images) == pytest.approx(alone.auroc(), abs=1e-12)
        assert ranking.aupro(0.3, images) == pytest.approx(alone.aupro(0.3), abs=1e-12)
    with pytest.raises(ValueError, match="both defect and defect-free"):
        ranking.auroc([1])  # no defect pixels in that image
    with pytest.raises(ValueError, match="image 0: mask"):
        PixelRanking([masks[0]], [maps[0][:10]])


def test_aupro_weights_regions_not_pixels():
    from defectkit.metrics import aupro

    # regions {0, 1, 2} and {5}: the big one is found at zero false alarms, the small one
    # only after every good pixel. Per region that is an overlap of 1/2 (per pixel it would
    # have been 3/4) until the false-alarm rate reaches 1/2.
    mask = np.array([[1, 1, 1, 0, 0, 1]])
    amap = np.array([[0.9, 0.9, 0.9, 0.5, 0.1, 0.05]])
    assert aupro([mask], [amap], max_fpr=0.3) == pytest.approx(0.5)


def test_f1_max_by_hand():
    from defectkit.metrics import f1_max

    # threshold 0.4 flags all 4 NG and 1 OK: precision 4/5, recall 1 -> F1 8/9
    best, threshold = f1_max(IS_NG, SCORE)
    assert best == pytest.approx(8 / 9)
    assert threshold == pytest.approx(0.4)


def test_bootstrap_interval_of_an_accuracy_matches_the_binomial_one():
    """80 of 100 right: the binomial 95% interval is 0.8 +- 1.96 sqrt(0.8 x 0.2 / 100)
    = 0.722..0.878; the percentile bootstrap lands within a hundredth and a half of it."""
    from defectkit.metrics import bootstrap_intervals, uncertainty

    right = np.r_[np.ones(80), np.zeros(20)]
    low, high = bootstrap_intervals(lambda i: {"accuracy": right[i].mean()}, 100)["accuracy"]
    half = 1.96 * np.sqrt(0.8 * 0.2 / 100)
    assert low == pytest.approx(0.8 - half, abs=0.015)
    assert high == pytest.approx(0.8 + half, abs=0.015)
    # a number undefined in most resamples gets no interval; few NG images get a warning
    rare = np.r_[1, np.zeros(99)]
    out = uncertainty(lambda i: {"x": 1.0 if rare[i].sum() > 3 else None}, 100, ng_images=1)
    assert out["intervals"] == {} and "only 1 NG image" in out["few_ng_warning"]


def test_segmentation_intervals_resample_whole_images():
    from defectkit.metrics import SegmentationScores

    scores = SegmentationScores()
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True
    for shift in range(20):  # predictions from exact to one 4x4 square off by a few pixels
        predicted = np.roll(truth, shift % 4, axis=1)
        scores.add(truth, predicted)
    result, extra = scores.result(), scores.uncertainty()
    low, high = extra["intervals"]["defect_iou"]
    assert low < result["defect_iou"] < high and low >= 0 and high <= 1
    assert extra["ng_test_images"] == 20 and "few_ng_warning" in extra


def test_pixel_ranking_in_pieces_gives_the_numbers_of_one_piece(monkeypatch):
    """The curves are summed piece by piece (memory: 17 bytes a pixel, not 40): pieces of 37
    pixels, ties cut nowhere, give the one-piece AUROC and AUPRO of all images and of
    subsets; the AUROC is scikit-learn's, ties counting half."""
    from sklearn.metrics import roc_auc_score

    from defectkit.metrics import PixelRanking

    rng = np.random.default_rng(0)
    masks = [rng.random((30, 40)) > 0.8 for _ in range(6)]
    maps = [np.round(rng.random((30, 40)) + m * 0.3, 2) for m in masks]  # many ties

    def numbers(ranking: PixelRanking) -> list[float]:
        return [ranking.auroc(), ranking.aupro(), ranking.auroc([0, 2]), ranking.aupro(0.3, [1, 5])]

    whole = numbers(PixelRanking(masks, maps))
    monkeypatch.setattr(PixelRanking, "PIECE", 37)
    assert numbers(PixelRanking(masks, iter(maps))) == pytest.approx(whole, rel=1e-12)
    truth = np.concatenate([m.ravel() for m in masks])
    assert whole[0] == pytest.approx(roc_auc_score(truth, np.concatenate(maps, axis=None)))
