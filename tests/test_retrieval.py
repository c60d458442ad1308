"""The retrieval task: Market-1501's protocol on a hand-worked example where every plausible
wrong rule gives another number, against torchmetrics, chunked; the ensemble embedding; the
peers' top-10 overlap; the embedding; the task in the loop on the embedded re-ID set."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
import torch.nn.functional as F

import kdlab
from kdlab.live import LivePlot
from kdlab.plots import retrieval_examples
from kdlab.tasks import get_task
from kdlab.tasks.retrieval import (
    Retrieval,
    RetrievalTest,
    embed,
    ensemble_embedding,
    retrieval_metrics,
    retrieve,
    top_overlap,
)

# ------------------------------------------------------------------ the hand-worked example
# Gallery (index: identity, camera). Queries are rows of a score matrix S; the gallery is the
# identity matrix, so the cosine similarity of query i and gallery image j is S[i, j] / ‖S[i]‖
# and each query ranks the gallery in the order of its row.
GALLERY = [(1, 1), (-1, 2), (2, 2), (1, 2), (0, 3), (1, 3), (3, 1), (2, 3)]
QUERIES = [(1, 1), (3, 1), (2, 3)]
SCORES = [
    [8, 7, 6, 4, 3, 2, 5, 1],  # query 1 ranks 0 1 2 6 3 4 5 7
    [1, 2, 3, 4, 5, 6, 7, 8],  # query 2 ranks 7 6 5 4 3 2 1 0
    [1, 8, 7, 2, 6, 3, 4, 5],  # query 3 ranks 1 2 4 7 6 5 3 0
]
# The protocol, by hand:
# query 1 (id 1, cam 1): 0 is id 1 in cam 1 (removed), 1 is junk (removed); what counts is
#   2 6 3 4 5 7, true matches 3 and 5 at ranks 3 and 5: AP = (1/3 + 2/5) / 2 = 0.366667.
# query 2 (id 3, cam 1): its only image, 6, is in cam 1: no true match left, skipped.
# query 3 (id 2, cam 3): 1 junk and 7 (id 2, cam 3) removed; 2 4 6 5 3 0 count, the true
#   match 2 at rank 1: AP = 1.
# mAP = (0.366667 + 1) / 2 = 0.683333; rank-1 = 1/2; rank-5 = rank-10 = 1.
RIGHT = {"map": (11 / 30 + 1) / 2, "rank1": 0.5, "rank5": 1.0, "rank10": 1.0}
# Each plausible wrong rule on the same example (worked by hand the same way):
WRONG = {
    # same-camera matches kept: AP 2/3 (ranks 1, 4, 6), 1/2 (query 2 kept), 5/6 (ranks 1, 3)
    "same_camera_kept": (2 / 3 + 1 / 2 + 5 / 6) / 3,
    # junk counted as a negative: ranks 4, 6 → 7/24, and rank 2 → 1/2
    "junk_counted": (7 / 24 + 1 / 2) / 2,
    # AP divided by the 6 gallery images that count, not by the true matches
    "ap_over_gallery": (11 / 15 / 6 + 1 / 6) / 2,
    # the skipped query averaged in as AP 0
    "skipped_averaged": (11 / 30 + 0 + 1) / 3,
    # distractors dropped rather than kept as negatives: ranks 3, 4 → 5/12
    "distractors_dropped": (5 / 12 + 1) / 2,
    # every image of the query's camera removed, whatever its identity: ranks 2, 4 → 1/2
    "camera_only": (1 / 2 + 1) / 2,
}


def _example(top: int = 0, chunk: int = 512):
    ids = lambda pairs: torch.tensor([p[0] for p in pairs])  # noqa: E731
    cams = lambda pairs: torch.tensor([p[1] for p in pairs])  # noqa: E731
    return retrieval_metrics(
        torch.tensor(SCORES, dtype=torch.float32), torch.eye(len(GALLERY)),
        ids(QUERIES), cams(QUERIES), ids(GALLERY), cams(GALLERY), top=top, chunk=chunk,
    )  # fmt: skip


def _by_rule(rule: str | None) -> float:
    """The example's mAP under one wrong rule (or the right ones), plain Python."""
    aps = []
    for (qid, qcam), row in zip(QUERIES, SCORES):
        order = sorted(range(len(GALLERY)), key=lambda j: -row[j])
        counted = []
        for j in order:
            gid, gcam = GALLERY[j]
            same_camera = gcam == qcam and (rule == "camera_only" or gid == qid)
            junk = gid == -1 and rule != "junk_counted"
            if junk or (same_camera and rule != "same_camera_kept"):
                continue
            if gid == 0 and rule == "distractors_dropped":
                continue
            counted.append(gid == qid)
        hits = [i for i, t in enumerate(counted, 1) if t]
        if not hits:
            if rule == "skipped_averaged":
                aps.append(0.0)
            continue
        total = sum(k / rank for k, rank in enumerate(hits, 1))
        aps.append(total / (len(counted) if rule == "ap_over_gallery" else len(hits)))
    return sum(aps) / len(aps)


def test_the_protocol_on_the_hand_worked_example():
    result = _example()
    assert result.map.item() == pytest.approx(RIGHT["map"], abs=1e-6)
    assert result.cmc.tolist() == pytest.approx([RIGHT["rank1"], RIGHT["rank5"], RIGHT["rank10"]])
    assert result.kept.tolist() == [True, False, True]
    assert result.ap[0].item() == pytest.approx(11 / 30) and result.ap[1].isnan()


@pytest.mark.parametrize("rule", sorted(WRONG))
def test_every_wrong_rule_gives_another_number(rule):
    """The example tells each plausible slip from the protocol: its number is the one worked
    by hand above, and it differs from the right one."""
    assert _by_rule(None) == pytest.approx(RIGHT["map"])
    assert _by_rule(rule) == pytest.approx(WRONG[rule])
    assert abs(WRONG[rule] - RIGHT["map"]) > 0.01


def test_top_lists_hold_what_the_protocol_ranks():
    top = _example(top=5).top
    assert top[0].tolist() == [2, 6, 3, 4, 5]  # junk and id 1 in camera 1 removed
    assert top[2].tolist() == [2, 4, 6, 5, 3]
    small = _example(top=8).top  # fewer than 8 images count: padded with −1
    assert small[0].tolist() == [2, 6, 3, 4, 5, 7, -1, -1]


def test_chunks_change_nothing():
    one, many = _example(top=4, chunk=512), _example(top=4, chunk=1)
    assert torch.equal(one.top, many.top) and torch.equal(one.ap.nan_to_num(), many.ap.nan_to_num())
    assert one.map == many.map and torch.equal(one.cmc, many.cmc)


def _random_split(seed: int, nq: int = 40, ng: int = 300, dim: int = 12):
    g = torch.Generator().manual_seed(seed)
    q, gal = torch.randn(nq, dim, generator=g), torch.randn(ng, dim, generator=g)
    qid, qcam = torch.randint(1, 15, (nq,), generator=g), torch.randint(1, 5, (nq,), generator=g)
    # gallery identities stop at 11: the queries of identities 12–14 have no match (skipped)
    gid, gcam = torch.randint(-1, 12, (ng,), generator=g), torch.randint(1, 5, (ng,), generator=g)
    return q, gal, qid, qcam, gid, gcam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics(seed):
    """mAP and CMC against torchmetrics' RetrievalMAP and RetrievalHitRate, fed what the
    protocol ranks (junk and same-identity-same-camera pairs removed, queries without a match
    skipped). torchmetrics ignores a relevant item whose score is ≤ 0, so the scores are
    shifted to 2 + cos (same order)."""
    tm = pytest.importorskip("torchmetrics.retrieval")
    q, g, qid, qcam, gid, gcam = _random_split(seed)
    ours = retrieval_metrics(q, g, qid, qcam, gid, gcam, chunk=7)
    scores = 2 + F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    keep = (gid != -1)[None] & ~((gid[None] == qid[:, None]) & (gcam[None] == qcam[:, None]))
    preds = scores[keep]
    target = (gid[None] == qid[:, None])[keep]
    indexes = torch.arange(len(q))[:, None].expand_as(keep)[keep]
    mean_ap = tm.RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    assert ours.map.item() == pytest.approx(mean_ap.item(), abs=1e-5)
    for i, k in enumerate((1, 5, 10)):
        hit = tm.RetrievalHitRate(top_k=k, empty_target_action="skip")
        assert ours.cmc[i].item() == pytest.approx(hit(preds, target, indexes=indexes).item())
    assert 0 < int(ours.kept.sum()) < len(q)  # some queries skipped: the rule is exercised


def test_bad_input_is_a_one_line_error():
    q, g, qid, qcam, gid, gcam = _random_split(0, nq=4, ng=20)
    with pytest.raises(ValueError, match="one identity and one camera per query"):
        retrieval_metrics(q, g, qid[:3], qcam, gid, gcam)
    with pytest.raises(ValueError, match="must be a real identity"):
        retrieval_metrics(q, g, torch.tensor([1, 0, 2, 3]), qcam, gid, gcam)
    with pytest.raises(ValueError, match="no query has a true match"):
        retrieval_metrics(q, g, torch.full((4,), 99), qcam, gid, gcam)


# ------------------------------------------------------------------ ensemble and agreement
def test_the_ensemble_ranks_by_the_mean_of_the_peers_cosine_similarities():
    """Two peers whose mean cosine puts a true match first where the mean of their embeddings
    does not: the ensemble embedding must follow the mean of the cosines."""
    a_q, a_g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    b_q, b_g = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # mean cosine: gallery 0 (0.6 + 0.8) / 2 = 0.7, gallery 1 (0 + 0) / 2 = 0 → 0 first.
    # mean of the embeddings: query (0.5, 0.5), gallery 0 (0.6, 0.8), gallery 1 (0.5, 0.5) → 1 first.
    q = ensemble_embedding([a_q, b_q])
    g = ensemble_embedding([a_g, b_g])
    cosine = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T)[0]
    assert cosine.tolist() == pytest.approx([0.7, 0.0])
    assert q.norm(dim=1).tolist() == pytest.approx([1.0])  # unit length already
    ids, cams = torch.tensor([1]), torch.tensor([1])
    result = retrieval_metrics(q, g, ids, cams, torch.tensor([1, 2]), torch.tensor([2, 2]))
    assert result.map.item() == pytest.approx(1.0)
    # peers of different widths
    assert ensemble_embedding([torch.randn(3, 4), torch.randn(3, 7)]).shape == (3, 11)


def test_top_overlap_counts_shared_images_over_k():
    a = torch.tensor([[1, 2, 3, 4], [5, 6, -1, -1]])
    b = torch.tensor([[4, 3, 9, 8], [6, 7, -1, -1]])
    # query 1 shares 2 of 4, query 2 shares 1 of 4 (padding never counts): mean 3/8
    assert top_overlap(a, b).item() == pytest.approx(3 / 8)
    assert top_overlap(a, a).item() == pytest.approx((4 + 2) / 8)


# ------------------------------------------------------------------ embedding and the loop
@pytest.fixture(scope="module")
def reid():
    return kdlab.load_dataset("reid_digits")


def test_the_embedding_is_the_pooled_last_feature_map(reid):
    net = kdlab.build_model("cnn_tiny", reid.num_classes, reid.in_channels).train()
    x = (reid.test_images[:6].float() - 128) / 64
    got = embed({"net": net}, [(x, None)])["net"]
    assert net.training  # the mode is given back
    net.eval()
    with torch.no_grad():
        features = net(x, return_features=True)[1][-1]
    expected = F.normalize(features.mean((2, 3)), dim=1)
    assert got.shape == (6, net.feature_dim) and torch.allclose(got, expected, atol=1e-6)


def test_the_task_is_registered_with_its_metrics():
    task = get_task("retrieval")()
    assert task.metric == "map" and task.metrics == ("map", "rank1", "rank5", "rank10")
    assert kdlab.data.DATASETS["reid_digits"].task == "retrieval"
    assert isinstance(kdlab.load_dataset("reid_digits").task, Retrieval)


@pytest.fixture(scope="module")
def trained(reid):
    config = kdlab.TrainConfig(epochs=4, batch_size=64, lr=3e-3, optimizer="adam",
                               betas=(0.5, 0.999), label_smoothing=0.1, schedule="cosine",
                               device="cpu", seed=0)  # fmt: skip
    return kdlab.run("dml", ["cnn_small", "cnn_small"], reid, config=config, progress=False)


def test_dml_on_identity_logits_beats_chance(trained, reid):
    """Chance: a random ranking's AP is about the share of true matches among the images
    that count (5 of about 700 here: under 2 %)."""
    last = trained.history[-1]
    for name in ("peer1", "peer2", "ensemble"):
        assert last[f"map/{name}"] > 10, name
        assert 0 <= last[f"rank1/{name}"] <= last[f"rank5/{name}"] <= last[f"rank10/{name}"] <= 100
    assert trained.history.metric == "map" and trained.history.networks()[-1] == "ensemble"
    summary = trained.summary
    assert summary["metric"] == "map" and summary["task"] == "retrieval"
    assert set(summary["networks"]["peer1"]) >= {"final_map", "best_map", "final_rank1"}
    assert 0 < summary["agreement"]["agree/peer1-peer2"] <= 100


def test_evaluate_matches_the_protocol_on_the_same_embeddings(trained, reid):
    networks = trained.networks
    test = RetrievalTest.of(reid, 256, "cpu")
    record = get_task("retrieval")().evaluate(networks, test, ["peer1", "peer2"])
    results = retrieve(networks, test, ["peer1", "peer2"])
    assert record["map/peer1"] == pytest.approx(100 * results["peer1"].map.item())
    assert record["rank5/ensemble"] == pytest.approx(100 * results["ensemble"].cmc[1].item())
    overlap = top_overlap(results["peer1"].top, results["peer2"].top).item()
    assert record["agree/peer1-peer2"] == pytest.approx(100 * overlap)
    assert list(record)[:3] == ["map/peer1", "map/peer2", "map/ensemble"]


def test_a_data_set_without_a_gallery_is_refused(digits):
    with pytest.raises(ValueError, match="has no query and gallery"):
        RetrievalTest.of(digits, 64, "cpu")


def test_live_plot_follows_the_historys_metric(trained):
    """The tracked history's headline metric (mAP here) is what the first panel draws."""
    live = LivePlot(output=types.SimpleNamespace(outputs=()), max_share=1.0)
    live.track("dml")(trained.history[-1], trained.history)
    assert live.draws == 1 and live.metric == "map"
    fig = live.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "test mAP (%)" and "peer agreement (%)" in titles
    lines = {line.get_label() for line in fig.axes[0].lines}
    assert lines == {"dml/peer1", "dml/peer2", "dml/ensemble"}


def test_the_query_figure_frames_right_and_wrong(trained, reid):
    results = retrieve(trained.networks, RetrievalTest.of(reid, 256, "cpu"), ["peer1", "peer2"])
    fig = retrieval_examples(reid, results, query=3, k=10)
    axes = fig.axes
    assert len(axes) == 3 * 11  # peer1, peer2, ensemble × (query + 10)
    _, q_ids, _ = reid.query
    _, g_ids, _ = reid.gallery
    colours = {"tab:green": (0.17, 0.63, 0.17), "tab:red": (0.84, 0.15, 0.16)}
    for row, name in enumerate(results):
        for col, index in enumerate(results[name].top[3, :10].tolist(), 1):
            edge = axes[row * 11 + col].spines["left"].get_edgecolor()[:3]
            right = int(g_ids[index]) == int(q_ids[3])
            expected = colours["tab:green" if right else "tab:red"]
            assert edge == pytest.approx(expected, abs=0.01), (name, col)


def test_every_pair_of_peers_gets_an_overlap(reid):
    networks = {f"peer{i}": kdlab.build_model("cnn_tiny", 150, 3) for i in (1, 2, 3)}
    names = list(networks)
    record = get_task("retrieval")().evaluate(networks, RetrievalTest.of(reid, 512, "cpu"), names)
    pairs = [f"agree/{a}-{b}" for a, b in itertools.combinations(names, 2)]
    assert [k for k in record if k.startswith("agree/")] == pairs
    assert "map/ensemble" in record and "rank10/ensemble" in record
