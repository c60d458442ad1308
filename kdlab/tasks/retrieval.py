"""The retrieval task: person re-identification (METHODS.md §9).

Training is identity classification: a batch is images and their training identities
(``0 … num_classes − 1``), so every method trains as it does for classification (DML on
identity logits is DML). What differs is the test: the networks never see the test identities,
so they are scored by *retrieval*, on the embedding right before the classifier.

- **Embedding**: the globally average-pooled last feature map of ``net(x, return_features=True)``
  (what the classifier reads), L2-normalised (:func:`embed`).
- **Distance**: cosine similarity of the normalised embeddings, highest first; on unit vectors
  ``‖a − b‖² = 2 − 2·a·b``, so this is also the order of euclidean distance. Normalising keeps
  an embedding's length (which follows the image's contrast and size more than its identity)
  out of the ranking, and is what lets the ensemble below average cosine similarities.
- **Ensemble** (:func:`ensemble_embedding`): the concatenation of the members' normalised
  embeddings scaled by ``1/√K``. Its cosine similarity is the *mean of the members' cosine
  similarities*, ``⟨[a₁…a_K]/√K, [b₁…b_K]/√K⟩ = (1/K)·Σ_k ⟨a_k, b_k⟩``: the retrieval
  counterpart of averaging the members' softmax outputs, and defined for members of different
  widths. The mean of the normalised embeddings would add coordinate k of one network to
  coordinate k of another, and two independently trained networks' coordinates mean different
  things (and it needs equal widths).
- **Metrics** (Market-1501's protocol, in one function: :func:`retrieval_metrics`): mAP and the
  CMC at ranks 1, 5, 10, in percent: ``map/<net>``, ``rank1/<net>``, ``rank5/<net>``,
  ``rank10/<net>`` and the same for ``ensemble``.
- **Agreement** of two peers (``agree/<a>-<b>``, percent): the overlap of their top-10
  retrieved lists, ``|top₁₀(a) ∩ top₁₀(b)| / 10``, averaged over the queries
  (:func:`top_overlap`); as in classification (same top-1 prediction) it is the peers'
  agreement on what they output, so the run summary's ``agreement`` and the grids' tables read
  it under the same key.

Evaluation runs in float32 with autocast off, in eval mode, without a graph.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import Task, register_task

__all__ = [
    "Retrieval",
    "RetrievalResult",
    "RetrievalTest",
    "embed",
    "ensemble_embedding",
    "evaluate",
    "retrieve",
    "retrieval_metrics",
    "top_overlap",
]

JUNK = -1  # Market-1501's identity of junk images (bad detections): never counted
RANKS = (1, 5, 10)  # the CMC ranks reported
OVERLAP_K = 10  # the length of the retrieved lists whose overlap is the peers' agreement


@dataclasses.dataclass
class RetrievalResult:
    """What :func:`retrieval_metrics` returns (tensors on the embeddings' device).

    ``map``: mean AP over the kept queries (a fraction, 0-d); ``cmc``: for each rank of
    ``ranks``, the fraction of kept queries with a true match within it; ``ap``: each query's
    AP (NaN where skipped); ``kept``: the queries with at least one true match; ``top``: for
    each query, the gallery indices of its ``top`` highest-ranked images that count (junk and
    same-camera matches removed), ``−1`` where fewer remain (``None`` when not asked for).
    """

    map: torch.Tensor
    cmc: torch.Tensor
    ranks: tuple[int, ...]
    ap: torch.Tensor
    kept: torch.Tensor
    top: torch.Tensor | None = None


def _check_ids(query_ids, query_cams, gallery_ids, gallery_cams, nq: int, ng: int) -> None:
    if len(query_ids) != nq or len(query_cams) != nq:
        raise ValueError(f"give one identity and one camera per query ({nq} queries)")
    if len(gallery_ids) != ng or len(gallery_cams) != ng:
        raise ValueError(f"give one identity and one camera per gallery image ({ng} images)")
    if nq and int(query_ids.min()) < 1:
        raise ValueError("every query must be a real identity (≥ 1), not junk or a distractor")


def retrieval_metrics(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_ids: torch.Tensor,
    query_cams: torch.Tensor,
    gallery_ids: torch.Tensor,
    gallery_cams: torch.Tensor,
    *,
    ranks: Sequence[int] = RANKS,
    top: int = 0,
    chunk: int = 512,
) -> RetrievalResult:
    """Market-1501's evaluation protocol (single query), vectorised in torch.

    Shapes: ``query`` Q×D and ``gallery`` G×D embeddings (normalised here), identities and
    cameras as integer tensors of length Q and G. For every query q of identity i and camera c:

    1. rank the whole gallery by cosine similarity to q, highest first (ties keep gallery
       order);
    2. remove the gallery images of identity i *and* camera c (the same person seen by the
       same camera is no re-identification) and every junk image (identity −1);
    3. keep the distractors (identity 0) and every other identity, as negatives;
    4. the true matches are the remaining images of identity i; a query with none left is
       *skipped*: it counts in no mean (not as AP 0);
    5. ``AP(q) = (1/n_q)·Σ_{true matches j} precision@rank(j)``, ranks counted among the
       remaining images and ``n_q`` the number of true matches (not of gallery images);
       ``CMC@k(q) = 1`` if the first true match is within the top k, else 0;
    6. mAP and CMC@k are the means over the kept queries (fractions; the task reports %).

    Queries go ``chunk`` at a time: peak memory about ``chunk·G·40`` bytes (512 queries against
    Market-1501's 19,732 gallery images: 0.4 GB), so 3,368 × 15,913 pairs fit a Colab T4.
    ``top > 0`` also returns each query's top-ranked remaining gallery indices (figures, and
    :func:`top_overlap`). Raises ValueError for mismatched lengths, a query that is junk or a
    distractor, and when no query has a true match.
    """
    nq, ng = len(query), len(gallery)
    _check_ids(query_ids, query_cams, gallery_ids, gallery_cams, nq, ng)
    device = query.device
    q = F.normalize(query.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1).to(device)
    gids, gcams = gallery_ids.to(device), gallery_cams.to(device)
    qids, qcams = query_ids.to(device)[:, None], query_cams.to(device)[:, None]
    aps, firsts, counts, tops = [], [], [], []
    for start in range(0, nq, chunk):
        end = min(start + chunk, nq)
        order = torch.sort(q[start:end] @ g.T, dim=1, descending=True, stable=True).indices
        ids, cams = gids[order], gcams[order]
        same_person = ids == qids[start:end]
        removed = (ids == JUNK) | (same_person & (cams == qcams[start:end]))
        counted = ~removed
        true = same_person & counted
        position = counted.cumsum(1)  # the rank of every remaining image, from 1
        precision = true.cumsum(1) / position.clamp_min(1)
        n_true = true.sum(1)
        aps.append((precision * true).sum(1) / n_true.clamp_min(1))
        firsts.append(torch.where(true, position, ng + 1).amin(1))
        counts.append(n_true)
        if top > 0:
            picked = torch.sort(removed.to(torch.uint8), dim=1, stable=True).indices[:, :top]
            tops.append(torch.where(counted.gather(1, picked), order.gather(1, picked), -1))
    ap, first, n_true = torch.cat(aps), torch.cat(firsts), torch.cat(counts)
    kept = n_true > 0
    if not bool(kept.any()):
        raise ValueError("no query has a true match in the gallery: nothing to score")
    ap = torch.where(kept, ap, torch.nan)
    cmc = torch.stack([(first[kept] <= k).double().mean() for k in ranks])
    mean_ap = ap[kept].mean()  # over the kept queries only
    return RetrievalResult(mean_ap, cmc, tuple(ranks), ap, kept, torch.cat(tops) if top else None)


def top_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean over queries of ``|A ∩ B| / k`` for two Q×k tables of retrieved gallery indices
    (a fraction, 0-d; padding ``−1`` never counts)."""
    same = (a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)
    return same.any(2).double().sum(1).div(a.shape[1]).mean()


def ensemble_embedding(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' L2-normalised embeddings concatenated and scaled by ``1/√K``: its cosine
    similarity is the mean of the members' cosine similarities (module docstring)."""
    return torch.cat([F.normalize(p.float(), dim=1) for p in parts], 1) / math.sqrt(len(parts))


@torch.no_grad()
def embed(
    networks: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Every network's L2-normalised embedding of every image of ``batches`` (N×D each): the
    globally average-pooled last feature map of ``net(x, return_features=True)``, in float32,
    in eval mode (each network's mode restored after)."""
    modes = {name: net.training for name, net in networks.items()}
    for net in networks.values():
        net.eval()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in networks}
    for x, _ in batches:
        with torch.autocast(x.device.type, enabled=False):
            for name, net in networks.items():
                features = net(x, return_features=True)[1][-1].float()
                chunks[name].append(F.normalize(features.mean((2, 3)), dim=1))
    for name, net in networks.items():
        net.train(modes[name])
    return {name: torch.cat(parts) for name, parts in chunks.items()}


@dataclasses.dataclass
class RetrievalTest:
    """What :meth:`Retrieval.loaders` hands :func:`evaluate`: the query-then-gallery images in
    order (``batches``), their identities and cameras, and how many are queries."""

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ids: torch.Tensor
    cams: torch.Tensor
    num_query: int

    @classmethod
    def of(cls, dataset, batch_size: int, device, **kw) -> RetrievalTest:
        from ..data import DeviceLoader

        if getattr(dataset, "test_cams", None) is None:
            raise ValueError(f"dataset {dataset.name!r} has no query and gallery to retrieve from")
        batches = DeviceLoader.test(dataset, batch_size, device, **kw)
        ids, cams = dataset.test_labels.to(device), dataset.test_cams.to(device)
        return cls(batches, ids, cams, dataset.num_query)

    def score(self, embeddings: torch.Tensor, top: int = 0) -> RetrievalResult:
        """:func:`retrieval_metrics` of the test split's embeddings (queries first)."""
        q, ids, cams = self.num_query, self.ids, self.cams
        return retrieval_metrics(embeddings[:q], embeddings[q:], ids[:q], cams[:q], ids[q:],
                                 cams[q:], top=top)  # fmt: skip


def retrieve(
    networks: Mapping[str, nn.Module], test: RetrievalTest, ensemble: Sequence[str] = ()
) -> dict[str, RetrievalResult]:
    """Every network's (and, with two members or more, the ensemble's) retrieval result, with
    each query's top-:data:`OVERLAP_K` list."""
    embeddings = embed(networks, test.batches)
    if len(ensemble) >= 2:
        embeddings["ensemble"] = ensemble_embedding([embeddings[n] for n in ensemble])
    return {name: test.score(e, top=OVERLAP_K) for name, e in embeddings.items()}


def evaluate(
    networks: Mapping[str, nn.Module], test: RetrievalTest, ensemble: Sequence[str] = ()
) -> dict[str, float]:
    """The record of one epoch: ``map/<net>``, ``rank<k>/<net>`` (also for ``ensemble``) and
    ``agree/<a>-<b>`` (top-10 overlap), in percent; one host transfer."""
    results = retrieve(networks, test, ensemble)
    keys, values = [], []
    for name, result in results.items():
        keys.append(f"map/{name}")
        values.append(result.map)
    for i, k in enumerate(RANKS):
        keys += [f"rank{k}/{name}" for name in results]
        values += [result.cmc[i] for result in results.values()]
    for a, b in itertools.combinations(ensemble, 2):
        keys.append(f"agree/{a}-{b}")
        values.append(top_overlap(results[a].top, results[b].top))
    host = (torch.stack([v.double() for v in values]) * 100).cpu()
    return dict(zip(keys, host.tolist()))


@register_task
class Retrieval(Task):
    """Person re-identification: trained on identity labels, scored by retrieving the gallery
    images of each query's identity (module docstring)."""

    name = "retrieval"
    metric = "map"
    metric_label = "mAP (%)"

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("map", *(f"rank{k}" for k in RANKS))

    def loaders(self, dataset, config, device, *, channels_last: bool = False):
        from ..data import DeviceLoader

        train = DeviceLoader.train(
            dataset, config.batch_size, device, seed=config.seed, channels_last=channels_last
        )
        test = RetrievalTest.of(dataset, config.eval_batch_size, device,
                                channels_last=channels_last)  # fmt: skip
        return train, test

    def evaluate(self, networks, test, ensemble=()):
        return evaluate(networks, test, ensemble)
