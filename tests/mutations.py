"""Named mutations: plant one known bug at a time in a copy of kdlab and check a test catches it.

Each mutation is an exact source substitution in ``kdlab/``: the plausible slips of issue 15 in
the losses, the methods and the metrics; the kinds of issue 23 that no test saw before (a
weight applied to another term, a correlation or standardisation on the wrong quantity or
detached, the gradient scaler updated more than once a batch, gradients never zeroed, run state
not restored on resume, evaluation that trains or builds a graph, file operations that a cut
leaves half done, milestones moved, ``auto`` precision blind to a CPU's bf16); those of issue 22:
figures that misstate their runs, documents that drift from the code. For each one the script
copies ``kdlab/``, ``tests/``, ``notebooks/``, ``README.md`` and ``pyproject.toml`` to a
throwaway folder, applies the substitution there, and runs
only the test files that concern it, with the copy first on ``PYTHONPATH``. A failing test run
*kills* the mutation; a passing one lets it *survive*. A target text that is not found exactly
once is an *error* (the code has moved: update the mutation), and so is a test run that cannot
start (a mutation that breaks the import is not a bug the tests found).

Before any mutation, the same test files run on an unchanged copy: they must pass there.

    python tests/mutations.py            # every mutation (make mutate)
    python tests/mutations.py --list     # their names
    python tests/mutations.py NAME ...   # some of them

Exit status 0 only when every mutation was applied and killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOSSES = "kdlab/losses.py"
ADML = "kdlab/methods/adml.py"
TADML = "kdlab/methods/tadml.py"
CLASSIFICATION = "kdlab/tasks/classification.py"
METRICS = "kdlab/metrics.py"
PLOTS = "kdlab/multirun.py"
LIVE = "kdlab/live.py"
MUTUAL_TESTS = ("tests/test_mutual.py",)
FIGURE_TESTS = ("tests/test_figures.py",)
DOCUMENT_TESTS = ("tests/test_documents.py",)
FOLDER_TESTS = ("tests/test_run_folders.py",)
COMMAND_TESTS = ("tests/test_newcomer_commands.py",)
METRIC_TESTS = ("tests/test_metrics.py", "tests/test_kdml.py")
EPOCH = "kdlab/epoch.py"
OPTIM = "kdlab/optim.py"
CHECKPOINT = "kdlab/checkpoint.py"
CALLBACKS = "kdlab/callbacks.py"
WEIGHT_TESTS = ("tests/test_weights.py",)
SCHEDULE_TESTS = ("tests/test_schedule.py",)
SCALER_TESTS = ("tests/test_scaler.py",)
RESUME_TESTS = ("tests/test_resume_state.py", "tests/test_resume.py")
EVALUATE_TESTS = ("tests/test_evaluate.py",)
ATOMIC_TESTS = ("tests/test_atomic.py",)
ONLINE = "kdlab/methods/{}.py"
ONLINE_TESTS = ("tests/test_online_family.py",)
BRANCH_TESTS = ("tests/test_branches.py",)
RETRIEVAL = "kdlab/tasks/retrieval.py"
RETRIEVAL_TESTS = ("tests/test_retrieval.py",)
REMOVED = "removed = (ids == JUNK) | (same_person & (cams == qcams[start:end]))"
FITNET = "kdlab/methods/fitnet.py"
FSP = "kdlab/methods/fsp.py"
TINY = "kdlab/data/tinyimagenet.py"
TABLE7_TESTS = ("tests/test_table7_methods.py",)
KDML_DET = "kdlab/methods/kdml_detection.py"
DETECTION = "kdlab/tasks/detection.py"
DET_METHOD_TESTS = ("tests/test_detection_kdml.py",)
DET_TASK_TESTS = ("tests/test_detection_task.py",)


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # what the substitution plants, in words
    path: str  # the file, relative to the repository root
    old: str  # the exact text replaced (must occur once)
    new: str
    tests: tuple[str, ...]  # the test files run against it


MUTATIONS = [
    Mutation(
        "topology-own-neighbours",
        "topology neighbours chosen in the network's own embedding, not the peer's",
        LOSSES,
        "similarity = (peer @ peer.T)",
        "similarity = (lambda h: h @ h.T)(F.normalize(embedding.detach().float().flatten(1), 1))",
        ("tests/test_losses_mutual.py", *MUTUAL_TESTS),
    ),
    Mutation(
        "disc-labels-swapped",
        "the discriminator learns the peers' outputs as fake and its own network's as real",
        ADML,
        "bce_logits(d_real, 1.0) + bce_logits(d_fake, 0.0)",
        "bce_logits(d_real, 0.0) + bce_logits(d_fake, 1.0)",
        MUTUAL_TESTS,
    ),
    Mutation(
        "adversarial-target-0",
        "the adversarial term asks the network to look fake (target 0)",
        ADML,
        "return bce_logits(disc(view), 1.0)",
        "return bce_logits(disc(view), 0.0)",
        MUTUAL_TESTS,
    ),
    Mutation(
        "adml-default-kl",
        "ADML's default divergence KL instead of JS",
        ADML,
        'divergence: str = "js"',
        'divergence: str = "kl"',
        MUTUAL_TESTS,
    ),
    Mutation(
        "adml-default-lam-adv-1",
        "ADML's default λ_adv 1 instead of 0.1",
        ADML,
        "lam_adv: float = 0.1",
        "lam_adv: float = 1.0",
        MUTUAL_TESTS,
    ),
    Mutation(
        "adml-default-betas",
        "the discriminators' Adam with Adam's own betas (0.9, 0.999) instead of (0.5, 0.999)",
        ADML,
        "disc_betas: tuple[float, ...] = (0.5, 0.999)",
        "disc_betas: tuple[float, ...] = (0.9, 0.999)",
        MUTUAL_TESTS,
    ),
    Mutation(
        "adml-divergence-summed",
        "ADML's divergence summed, not averaged, over the other peers",
        ADML,
        '"div": p.lam_div * peer_mean(divergence)',
        '"div": p.lam_div * sum(divergence)',
        MUTUAL_TESTS,
    ),
    Mutation(
        "tadml-topology-summed",
        "TADML's topology term summed, not averaged, over the other peers",
        TADML,
        "self.params.lam_topo * peer_mean(topo)",
        "self.params.lam_topo * sum(topo)",
        MUTUAL_TESTS,
    ),
    Mutation(
        "tadml-first-stage",
        "TADML's topology on the first stage instead of the last",
        TADML,
        "features[-1:]",
        "features[:1]",
        MUTUAL_TESTS,
    ),
    Mutation(
        "ensemble-mean-logits",
        "the ensemble averages the members' logits instead of their softmax outputs",
        CLASSIFICATION,
        "mean = torch.stack(list(probs.values())).mean(0)",
        "mean = torch.stack([logits[name] for name in ensemble]).mean(0)",
        METRIC_TESTS,
    ),
    Mutation(
        "js-metric-is-kl",
        "the JS metric replaced by KL(p ‖ q)",
        METRICS,
        "return (0.5 * (kl(p) + kl(q))).clamp_min(0.0)",
        "return (torch.xlogy(p, p).sum(1) - (p * q.clamp_min(1e-30).log()).sum(1)).clamp_min(0)",
        METRIC_TESTS,
    ),
    Mutation(
        "js-metric-halved",
        "the JS metric halved",
        METRICS,
        "return (0.5 * (kl(p) + kl(q))).clamp_min(0.0)",
        "return (0.25 * (kl(p) + kl(q))).clamp_min(0.0)",
        METRIC_TESTS,
    ),
    Mutation(
        "curves-per-seed",
        "multi-run figures draw one line and legend entry per seed instead of a mean and a band",
        PLOTS,
        "return {setting: dict(seeds) for setting, seeds in runs.items()}",
        "return {f'{s} s{k}': {k: r} for s, seeds in runs.items() for k, r in seeds.items()}",
        FIGURE_TESTS,
    ),
    Mutation(
        "curves-one-line-style",
        "every network of a setting drawn in its colour with the same line style",
        PLOTS,
        "styles = {} if split else {p: _STYLES[i % len(_STYLES)] for i, p in enumerate(plain)}",
        "styles = {}",
        FIGURE_TESTS,
    ),
    Mutation(
        "curves-legend-inside",
        "the legend of a multi-run figure drawn over the axes",
        PLOTS,
        'loc="outside right upper"',
        'loc="upper right"',
        FIGURE_TESTS,
    ),
    Mutation(
        "accuracy-n-counts-seeds",
        "every value of a cohort counted as a seed (n = 6 seeds for 3 seeds × 2 networks)",
        PLOTS,
        'return flat, f"{len(flat)} ({seeds} × {nets} networks)"',
        'return flat, _plural(len(flat), "seed")',
        FIGURE_TESTS,
    ),
    Mutation(
        "accuracy-break-unmarked",
        "an accuracy axis that starts above zero without its break mark",
        PLOTS,
        "        _mark_break(ax)\n",
        "",
        FIGURE_TESTS,
    ),
    Mutation(
        "settings-bar-from-minimum",
        "the settings chart scales each bar from its slider's minimum (K = 2 of 2…4 drawn empty)",
        LIVE,
        "[w.value / s for w, s in zip(numeric.values(), scales)]",
        "[(w.value - w.min) / ((w.max - w.min) or 1) for w in numeric.values()]",
        FIGURE_TESTS,
    ),
    Mutation(
        "run-folder-without-train-size",
        "config.json does not record how many training images the run had",
        "kdlab/callbacks.py",
        '{**settings, "train_size": len(dataset.train_labels), **used}',
        "{**settings, **used}",
        DOCUMENT_TESTS,
    ),
    Mutation(
        "digits-grid-without-dkd",
        "the digits grid, said to run every method, leaves DKD out",
        "kdlab/grids/digits.yaml",
        "  - method: dkd\n",
        "  - method: kd\n",
        DOCUMENT_TESTS,
    ),
    Mutation(
        "methods-reference-without-5",
        "the methods reference loses the section that TADML's docstrings cite",
        "kdlab/METHODS.md",
        "## 5. Topology-guided",
        "## Topology-guided",
        DOCUMENT_TESTS,
    ),
    Mutation(
        "published-number-drifts",
        "a published number in the table no longer agrees with the methods reference",
        "kdlab/reproduce/published.csv",
        "dml,resnet32 resnet32,,71.86 71.89",
        "dml,resnet32 resnet32,,71.68 71.89",
        DOCUMENT_TESTS,
    ),
    Mutation(
        "resume-student-phase-strictly",
        "the phases of a run whose teacher trains first each claim the folder with the run's own "
        "resume: the student phase refuses the folder its teacher phase wrote",
        "kdlab/reproduce/contract.py",
        'resume, overwrite = "auto", False  # each phase continues its own part',
        "overwrite = False",
        FOLDER_TESTS,
    ),
    Mutation(
        "run-folder-overwritten-silently",
        "a run written into a folder that holds another run, without resume or overwrite",
        "kdlab/runfolder.py",
        '    raise RunExistsError(\n        say("{out} holds a run already',
        '    return "start"\n    raise RunExistsError(\n        say("{out} holds a run already',
        FOLDER_TESTS,
    ),
    Mutation(
        "overwrite-keeps-old-files",
        "overwrite writes the new run over the old one instead of clearing the folder",
        "kdlab/runfolder.py",
        "            clear(out)",
        "            pass",
        FOLDER_TESTS,
    ),
    Mutation(
        "damaged-checkpoint-traceback",
        "an empty or truncated checkpoint.pt reaches the user as torch's EOFError/RuntimeError",
        "kdlab/checkpoint.py",
        "    except Exception as error:  # EOFError (empty), RuntimeError (truncated zip)",
        "    except OSError as error:  # EOFError (empty), RuntimeError (truncated zip)",
        FOLDER_TESTS,
    ),
    Mutation(
        "damaged-json-unnamed",
        "a corrupt config.json gives the JSON parser's message, which names no file",
        "kdlab/io.py",
        "    except json.JSONDecodeError as error:",
        "    except TypeError as error:",
        FOLDER_TESTS,
    ),
    Mutation(
        "device-unchecked",
        "a device name handed to torch unchecked: 'foo' or a missing CUDA ends in a traceback",
        "kdlab/train.py",
        '    choose = say("choose {device=auto}, cpu, cuda, cuda:N or mps")',
        "    return torch.device(device)",
        FOLDER_TESTS,
    ),
    Mutation(
        "teacher-path-as-architecture",
        "a teacher path not ending in .pt taken for an architecture name ('unknown model')",
        "kdlab/train.py",
        '"/" in teacher or "\\\\" in teacher or bool(Path(teacher).suffix)',
        'Path(teacher).suffix == ".pt"',
        FOLDER_TESTS,
    ),
    Mutation(
        "cli-speaks-python",
        "the command line's messages name the Python API's keywords (resume=True…)",
        "kdlab/cli.py",
        '        with speaking("cli"):',
        '        with speaking("python"):',
        FOLDER_TESTS,
    ),
    Mutation(
        "resume-silent",
        "a resumed run does not say from which epoch it goes on",
        "kdlab/train.py",
        "        _say_resumed(out, len(history), last_epoch, config.epochs)",
        "        pass",
        FOLDER_TESTS,
    ),
    Mutation(
        "grids-mix-in-one-folder",
        "a grid run into another grid's folder: both grids' cells in one results table",
        "kdlab/reproduce/execute.py",
        "    _check_grid_folder(out, grid.name)",
        "    pass",
        FOLDER_TESTS,
    ),
    Mutation(
        "dry-run-builds-nothing",
        "a grid's cells are not built before they run: lam: -1 passes the dry run",
        "kdlab/reproduce/grid.py",
        "        _check_builds(here, cell)",
        "        pass",
        COMMAND_TESTS,
    ),
    Mutation(
        "cpu-fallback-whatever-asked",
        "the lab profile falls back to digits on a CPU whatever was asked (train --epochs 1)",
        "kdlab/profiles.py",
        "            if images > CPU_IMAGE_BUDGET:",
        "            if True:",
        COMMAND_TESTS,
    ),
    Mutation(
        "demo-without-progress",
        "make demo runs each notebook without papermill's progress bar over its cells",
        "kdlab/cli.py",
        "                    progress=not args.no_progress)  # fmt: skip",
        "                    progress=False)  # fmt: skip",
        COMMAND_TESTS,
    ),
    Mutation(
        "fitnet-no-regressor",
        "FitNet's hint compares the student's map itself, not its regressor's output",
        FITNET,
        'hint_loss(self.auxiliary["regressors"][name](feature), teacher_feature)',
        "hint_loss(feature, teacher_feature)",
        TABLE7_TESTS,
    ),
    Mutation(
        "fitnet-first-stage",
        "FitNet's hint taken at the first stage instead of the chosen one",
        FITNET,
        "k = self.params.hint_stage - 1",
        "k = 0",
        TABLE7_TESTS,
    ),
    Mutation(
        "fitnet-default-last-stage",
        "FitNet's default hint on the last stage instead of the middle one",
        FITNET,
        "hint_stage: int = 2",
        "hint_stage: int = 3",
        TABLE7_TESTS,
    ),
    Mutation(
        "hint-summed",
        "the hint summed over the elements instead of averaged",
        LOSSES,
        "return (regressed - target).square().mean()",
        "return (regressed - target).square().sum()",
        TABLE7_TESTS,
    ),
    Mutation(
        "hint-teacher-not-detached",
        "the hint's teacher map not detached",
        LOSSES,
        "teacher_map.detach().float()",
        "teacher_map.float()",
        TABLE7_TESTS,
    ),
    Mutation(
        "fsp-no-normalisation",
        "the flow matrix summed over positions, without the 1/(h·w)",
        LOSSES,
        "second.flatten(2).transpose(1, 2)) / positions",
        "second.flatten(2).transpose(1, 2))",
        TABLE7_TESTS,
    ),
    Mutation(
        "fsp-entries-summed",
        "FSP's squared difference summed over the m×n entries instead of averaged",
        LOSSES,
        "terms.append((g_s - g_t).square().mean())",
        "terms.append((g_s - g_t).square().sum())",
        TABLE7_TESTS,
    ),
    Mutation(
        "fsp-pairs-summed",
        "FSP summed over the stage pairs instead of averaged",
        LOSSES,
        "return torch.stack(terms).mean()",
        "return torch.stack(terms).sum()",
        TABLE7_TESTS,
    ),
    Mutation(
        "fsp-teacher-not-detached",
        "the teacher's flow matrices not detached",
        LOSSES,
        "flow_matrix(teacher_maps[k].detach(), teacher_maps[k + 1].detach())",
        "flow_matrix(teacher_maps[k], teacher_maps[k + 1])",
        TABLE7_TESTS,
    ),
    Mutation(
        "fsp-default-one-stage",
        "FSP's default schedule one stage instead of the two-stage initialisation",
        FSP,
        "stages: int = 2",
        "stages: int = 1",
        TABLE7_TESTS,
    ),
    Mutation(
        "logit-regression-on-softmax",
        "logit regression on the softmax outputs instead of the logits",
        LOSSES,
        "difference = student_logits.float() - teacher_logits.detach().float()",
        "difference = student_logits.float().softmax(1) - teacher_logits.detach().float().softmax(1)",
        TABLE7_TESTS,
    ),
    Mutation(
        "logit-regression-mean-over-elements",
        "logit regression averaged over classes too instead of summed over them",
        LOSSES,
        "return 0.5 * difference.square().sum(dim=1).mean()",
        "return 0.5 * difference.square().mean()",
        TABLE7_TESTS,
    ),
    Mutation(
        "logit-regression-teacher-not-detached",
        "the teacher's logits not detached in logit regression",
        LOSSES,
        "difference = student_logits.float() - teacher_logits.detach().float()",
        "difference = student_logits.float() - teacher_logits.float()",
        TABLE7_TESTS,
    ),
    Mutation(
        "tinyimagenet-val-one-class",
        "Tiny-ImageNet's validation labels not read from val_annotations.txt (all one class)",
        TINY,
        "labels.append(index[fields[1]])",
        "labels.append(0)",
        ("tests/test_tinyimagenet.py",),
    ),
    Mutation(
        "auroc-other-class",
        "AUROC ranks by the other class's probability, not the positive class's",
        METRICS,
        "binary_auroc(probabilities[:, positive], (labels == positive).long())",
        "binary_auroc(probabilities[:, 1 - positive], (labels == positive).long())",
        ("tests/test_unbalanced_metrics.py",),
    ),
    Mutation(
        "balanced-accuracy-is-accuracy",
        "balanced accuracy computed as plain accuracy (micro average)",
        METRICS,
        'num_classes=classes, average="macro")\n',
        'num_classes=classes, average="micro")\n',
        ("tests/test_unbalanced_metrics.py",),
    ),
    # The online family (issue 21, METHODS.md §11).
    Mutation(
        "one-gate-softmax-over-batch",
        "ONE's gate normalised over the batch instead of over the branches",
        ONLINE.format("one"),
        "return F.softmax(scores.float(), dim=1)",
        "return F.softmax(scores.float(), dim=0)",
        ONLINE_TESTS,
    ),
    Mutation(
        "one-teacher-not-detached",
        "ONE's gated ensemble left attached as the KL target (gradient into the gate)",
        ONLINE.format("one"),
        '"kd": w * sum(kd_loss(z, z_e, p.temperature) for z in branches)',
        '"kd": w * sum(p.temperature**2 * F.kl_div(F.log_softmax(z / p.temperature, 1), '
        'F.softmax(z_e / p.temperature, 1), reduction="batchmean") for z in branches)',
        ONLINE_TESTS,
    ),
    Mutation(
        "one-no-t-squared",
        "ONE's KL without the T² factor",
        ONLINE.format("one"),
        "kd_loss(z, z_e, p.temperature) for z in branches",
        "kd_loss(z, z_e, p.temperature) / p.temperature**2 for z in branches",
        ONLINE_TESTS,
    ),
    Mutation(
        "cl-mean-of-all-branches",
        "CL-ILR's target the mean of all branches, the learner's own included",
        ONLINE.format("cl_ilr"),
        "return (logits.sum(1, keepdim=True) - logits) / (m - 1)",
        "return logits.mean(1, keepdim=True).expand_as(logits)",
        ONLINE_TESTS,
    ),
    Mutation(
        "cl-trunk-gradient-not-divided",
        "CL-ILR without backpropagation rescaling: the trunk takes the branches' summed gradient",
        ONLINE.format("cl_ilr"),
        "net.trunk_grad_scale = 1.0 / net.num_branches if self.params.ilr else 1.0",
        "net.trunk_grad_scale = 1.0",
        ONLINE_TESTS,
    ),
    Mutation(
        "okddip-peers-not-detached",
        "OKDDip's attention-weighted targets send gradient into the other peers",
        ONLINE.format("okddip"),
        "return torch.bmm(attention, logits[:, :n].detach().float())",
        "return torch.bmm(attention, logits[:, :n].float())",
        ONLINE_TESTS,
    ),
    Mutation(
        "okddip-leader-in-its-target",
        "OKDDip's leader learns from the mean of every branch, itself included",
        ONLINE.format("okddip"),
        "leader_term = kd_loss(leader, peers.mean(1), p.temperature)",
        "leader_term = kd_loss(leader, logits.mean(1), p.temperature)",
        ONLINE_TESTS,
    ),
    Mutation(
        "kdcl-one-view-for-all",
        "KDCL's students all see the first augmented view",
        ONLINE.format("kdcl"),
        "inputs = as_views(x, len(self.networks))",
        "inputs = as_views(x[0] if isinstance(x, tuple) else x, len(self.networks))",
        ONLINE_TESTS,
    ),
    Mutation(
        "kdcl-max-logit",
        "KDCL's minimum-logit teacher takes the maximum",
        ONLINE.format("kdcl"),
        "return (z - true).min(0).values",
        "return (z - true).max(0).values",
        ONLINE_TESTS,
    ),
    Mutation(
        "pcl-ema-before-step",
        "PCL's temporal means updated before the optimizer's step",
        ONLINE.format("pcl"),
        '        update({self.net_name: terms}, also_step=("head",))\n        self.update_means()',
        '        self.update_means()\n        update({self.net_name: terms}, also_step=("head",))',
        ONLINE_TESTS,
    ),
    Mutation(
        "pcl-ema-trainable",
        "PCL's temporal means left trainable",
        ONLINE.format("pcl"),
        "mean.requires_grad_(False)",
        "mean.requires_grad_(True)",
        ONLINE_TESTS,
    ),
    Mutation(
        "pcl-ema-no-warm-up",
        "PCL's temporal means at decay 0.999 from the first step (no true mean at first)",
        ONLINE.format("pcl"),
        "alpha = (1.0 - 1.0 / (updates + 1.0)).clamp(max=self.params.ema_decay)",
        "alpha = torch.tensor(self.params.ema_decay)",
        ONLINE_TESTS,
    ),
    Mutation(
        "pcl-own-mean-as-target",
        "PCL's peers learn from every temporal mean, their own included",
        ONLINE.format("pcl"),
        "sum(kd_loss(z, z_mean[:, l], t) for l in range(m) if l != i) / (m - 1)",
        "sum(kd_loss(z, z_mean[:, l], t) for l in range(m)) / m",
        ONLINE_TESTS,
    ),
    Mutation(
        "rampup-counted-from-1",
        "the ramp-up's epoch counted from 1 (the authors' loops count from 0)",
        "kdlab/methods/base.py",
        "current = min(max(epoch - 1, 0), length)",
        "current = min(max(epoch, 0), length)",
        ONLINE_TESTS,
    ),
    Mutation(
        "rampup-reproduction-bug",
        "the PCL reproduction's ramp-up (current / λ with λ = 1): w ≈ 0 for 80 epochs",
        "kdlab/methods/base.py",
        "return math.exp(-5.0 * (1.0 - current / length) ** 2)",
        "return math.exp(-5.0 * (1.0 - current) ** 2)",
        ONLINE_TESTS,
    ),
    Mutation(
        "views-share-one-augmentation",
        "the loader's views are one augmentation repeated",
        "kdlab/data/images.py",
        "views = [self._prepare(images) for _ in range(self.views)]",
        "views = [self._prepare(images)] * self.views",
        BRANCH_TESTS,
    ),
    Mutation(
        "cost-macs-are-flops",
        "MACs reported as FLOPs (not halved)",
        "kdlab/cost.py",
        "return counter.get_total_flops() / 2 / x.shape[0]",
        "return counter.get_total_flops() / x.shape[0]",
        BRANCH_TESTS,
    ),
    Mutation(
        "reid-same-camera-kept",
        "the query's identity seen by the query's own camera is kept as a true match",
        RETRIEVAL,
        REMOVED,
        "removed = ids == JUNK",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-junk-counted",
        "junk images (identity −1) counted as negatives instead of left out",
        RETRIEVAL,
        REMOVED,
        "removed = same_person & (cams == qcams[start:end])",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-distractors-dropped",
        "distractors (identity 0) left out instead of kept as negatives",
        RETRIEVAL,
        REMOVED,
        "removed = (ids <= 0) | (same_person & (cams == qcams[start:end]))",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-camera-only",
        "every gallery image of the query's camera removed, whatever its identity",
        RETRIEVAL,
        REMOVED,
        "removed = (ids == JUNK) | (cams == qcams[start:end])",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-ap-over-gallery",
        "AP divided by the number of gallery images instead of the number of true matches",
        RETRIEVAL,
        "aps.append((precision * true).sum(1) / n_true.clamp_min(1))",
        "aps.append((precision * true).sum(1) / counted.sum(1))",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-skipped-averaged",
        "queries without a true match averaged into the mAP as AP 0",
        RETRIEVAL,
        "mean_ap = ap[kept].mean()",
        "mean_ap = torch.where(kept, ap, 0.0).mean()",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-ensemble-mean-embedding",
        "the ensemble embedding is the mean of the members' embeddings, not their concatenation",
        RETRIEVAL,
        "torch.cat([F.normalize(p.float(), dim=1) for p in parts], 1) / math.sqrt(len(parts))",
        "torch.stack([F.normalize(p.float(), dim=1) for p in parts]).mean(0)",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-top-unfiltered",
        "the retrieved lists (figure, peers' overlap) keep junk and same-camera matches",
        RETRIEVAL,
        "picked = torch.sort(removed.to(torch.uint8), dim=1, stable=True).indices[:, :top]",
        "picked = torch.arange(ng, device=device).expand(end - start, ng)[:, :top]",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "reid-embedding-first-stage",
        "the embedding pooled from the first stage instead of the last",
        RETRIEVAL,
        "features = net(x, return_features=True)[1][-1].float()",
        "features = net(x, return_features=True)[1][0].float()",
        RETRIEVAL_TESTS,
    ),
    Mutation(
        "erasing-global-rng",
        "random erasing drawn from the global RNG, not the loader's (a resume sees other masks)",
        "kdlab/data/images.py",
        "u = torch.rand(b, 5, device=x.device, generator=self.generator)",
        "u = torch.rand(b, 5, device=x.device)",
        ("tests/test_reid_data.py",),
    ),
    Mutation(
        "market-junk-in-gallery",
        "Market-1501's junk images (identity −1) loaded into the gallery by default",
        "kdlab/data/market1501.py",
        "if keep_junk else gallery_ids != JUNK",
        "if keep_junk else gallery_ids >= JUNK",
        ("tests/test_reid_data.py",),
    ),
    Mutation(
        "published-any-metric",
        "a published mAP shown beside an accuracy (the published rows' metric ignored)",
        "kdlab/reproduce/published.py",
        ' or row["metric"] != metric',
        "",
        ("tests/test_reid_grid.py",),
    ),
    Mutation(
        "det-kl-direction",
        "detection's mutual term KL(p_s ‖ p_peer) instead of KL(sg p_peer ‖ p_s)",
        KDML_DET,
        "sum(mutual_kl(z, peer) for peer in z_peers)",
        "sum(mutual_kl(peer, z) for peer in z_peers)",
        DET_METHOD_TESTS,
    ),
    Mutation(
        "det-ml-summed",
        "detection's mutual term summed over the peers, not averaged",
        KDML_DET,
        "sum(mutual_kl(z, peer) for peer in z_peers) / len(z_peers)",
        "sum(mutual_kl(z, peer) for peer in z_peers)",
        DET_METHOD_TESTS,
    ),
    Mutation(
        "det-alpha-on-peers",
        "detection's peer term weighted by α (the teacher's weight) instead of β",
        KDML_DET,
        'terms["ml"] = beta * sum(',
        'terms["ml"] = alpha * sum(',
        ("tests/test_weights.py",),
    ),
    Mutation(
        "det-regions-from-teacher",
        "every student distilled on the first network's (the teacher's) proposals, not its own",
        KDML_DET,
        "regions = {name: passes[name].proposals for name in self.students}",
        "regions = {name: passes[next(iter(passes))].proposals for name in self.students}",
        DET_METHOD_TESTS,
    ),
    Mutation(
        "det-peers-not-detached",
        "the soft targets (teacher's, peers') not detached in the KL",
        LOSSES,
        "target = F.softmax(target_logits.detach().float() / temperature, dim=1)",
        "target = F.softmax(target_logits.float() / temperature, dim=1)",
        DET_METHOD_TESTS,
    ),
    Mutation(
        "det-wbf-max-score",
        "the fused box scored by its members' best score, not their mean (× found/M)",
        DETECTION,
        'conf_type="avg"',
        'conf_type="max"',
        DET_TASK_TESTS,
    ),
    Mutation(
        "det-wbf-height-width",
        "boxes normalised by (H, W) instead of (W, H) before fusion",
        DETECTION,
        "scale = torch.tensor([width, height, width, height], dtype=torch.float32)",
        "scale = torch.tensor([height, width, height, width], dtype=torch.float32)",
        DET_TASK_TESTS,
    ),
    Mutation(
        "det-map-is-map50",
        "the headline mAP@[.5:.95] reported as mAP@0.5",
        DETECTION,
        '"map": 100 * float(result["map"])',
        '"map": 100 * float(result["map_50"])',
        DET_TASK_TESTS,
    ),
    Mutation(
        "det-flip-corners",
        "a flipped box keeps its corners' order: x1 ↦ W − x1, x2 ↦ W − x2",
        "kdlab/data/boxes.py",
        "[width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]]",
        "[width - boxes[:, 0], boxes[:, 1], width - boxes[:, 2], boxes[:, 3]]",
        ("tests/test_detection_data.py",),
    ),
    # -- issue 23: weights on the wrong term --------------------------------------------------------
    Mutation(
        "dist-weights-swapped",
        "DIST's β weights the intra-class term and γ the inter-class one",
        "kdlab/methods/dist.py",
        '"inter": p.beta * inter,\n            "intra": p.gamma * intra,',
        '"inter": p.gamma * inter,\n            "intra": p.beta * intra,',
        WEIGHT_TESTS,
    ),
    Mutation(
        "dkd-weights-swapped",
        "DKD's α weights NCKD and β TCKD",
        "kdlab/methods/dkd.py",
        '"tckd": warm * p.alpha * tckd,\n            "nckd": warm * p.beta * nckd,',
        '"tckd": warm * p.beta * tckd,\n            "nckd": warm * p.alpha * nckd,',
        WEIGHT_TESTS,
    ),
    Mutation(
        "kd-ls-weights-swapped",
        "KD with standardised logits: the KD weight on the CE and the CE weight on KD",
        "kdlab/methods/logit_std.py",
        '"ce": p.ce_weight * self.ce(logits, y),\n            "kd": p.kd_weight *',
        '"ce": p.kd_weight * self.ce(logits, y),\n            "kd": p.ce_weight *',
        WEIGHT_TESTS,
    ),
    Mutation(
        "kdml-alpha-on-peers",
        "KD + ML's peer term weighted by α (the teacher's weight) instead of β",
        "kdlab/methods/kdml.py",
        'own["ml"] = p.beta * sum(',
        'own["ml"] = p.alpha * sum(',
        WEIGHT_TESTS,
    ),
    Mutation(
        "adml-lam-adv-on-divergence",
        "ADML's divergence weighted by λ_adv instead of λ_div",
        ADML,
        '"div": p.lam_div * peer_mean(divergence)',
        '"div": p.lam_adv * peer_mean(divergence)',
        WEIGHT_TESTS,
    ),
    # -- issue 23: correlations and standardisation ---------------------------------------------------
    Mutation(
        "dist-intra-on-logits",
        "DIST's intra-class correlation computed on the logits, not the probabilities",
        LOSSES,
        "intra = 1 - pearson_correlation(p_s.T, p_t.T).mean()",
        "intra = 1 - pearson_correlation(student_logits.float().T, "
        "teacher_logits.detach().float().T).mean()",
        ("tests/test_invariances.py",),
    ),
    Mutation(
        "dist-inter-on-logits",
        "DIST's inter-class correlation computed on the logits, not the probabilities",
        LOSSES,
        "inter = 1 - pearson_correlation(p_s, p_t).mean()",
        "inter = 1 - pearson_correlation(student_logits.float(), "
        "teacher_logits.detach().float()).mean()",
        ("tests/test_invariances.py",),
    ),
    Mutation(
        "standardise-mean-detached",
        "the standardisation's mean detached (no gradient through it)",
        LOSSES,
        "(z - z.mean(dim=1, keepdim=True))",
        "(z - z.mean(dim=1, keepdim=True).detach())",
        ("tests/test_invariances.py",),
    ),
    Mutation(
        "standardise-std-detached",
        "the standardisation's standard deviation detached (no gradient through it)",
        LOSSES,
        "(z.std(dim=1, keepdim=True) + eps)",
        "(z.std(dim=1, keepdim=True).detach() + eps)",
        ("tests/test_invariances.py",),
    ),
    Mutation(
        "kd-teacher-not-detached",
        "the KL's target (the teacher, the peer) not detached: gradient flows into it",
        LOSSES,
        "target = F.softmax(target_logits.detach().float() / temperature, dim=1)",
        "target = F.softmax(target_logits.float() / temperature, dim=1)",
        ("tests/test_losses.py",),
    ),
    Mutation(
        "mutual-kl-reversed",
        "DML's mimicry term KL(p ‖ sg p_peer) instead of KL(sg p_peer ‖ p)",
        LOSSES,
        "return kl_divergence(peer_logits, logits, temperature)",
        "return kl_divergence(logits.detach(), peer_logits, temperature)",
        ("tests/test_losses.py", "tests/test_losses_mutual.py"),
    ),
    # -- issue 23: the loop's update ----------------------------------------------------------------
    Mutation(
        "scaler-update-per-call",
        "the gradient scaler updated after every update() call (twice a batch for ADML)",
        EPOCH,
        "            self.pending.add(id(optimizer))\n\n    def end_batch",
        "            self.pending.add(id(optimizer))\n        self.end_batch()\n\n    def end_batch",
        SCALER_TESTS,
    ),
    Mutation(
        "scaler-update-per-optimizer",
        "scaler.update() inside the per-optimizer loop",
        EPOCH,
        "            self.pending.add(id(optimizer))\n",
        "            self.pending.add(id(optimizer))\n            self.end_batch()\n",
        SCALER_TESTS,
    ),
    Mutation(
        "scaler-never-updated",
        "the loop never updates the gradient scaler",
        EPOCH,
        "        update.end_batch()\n",
        "",
        SCALER_TESTS,
    ),
    Mutation(
        "also-step-not-zeroed",
        "the gradients of also_step modules (kdml's adapters) never zeroed",
        EPOCH,
        "        for optimizer in stepped:\n            optimizer.zero_grad(set_to_none=True)",
        "        for optimizer in stepped[: len(terms)]:\n            optimizer.zero_grad(set_to_none=True)",
        ("tests/test_loop_contract.py",),
    ),
    # -- issue 23: the schedule -----------------------------------------------------------------------
    Mutation(
        "milestones-rescaled",
        "milestones read as epochs of 200 and rescaled to the run (mdistiller's recipe moved)",
        OPTIM,
        "milestones = list(config.milestones)",
        "milestones = sorted({max(1, round(m * config.epochs / 200)) for m in config.milestones})",
        SCHEDULE_TESTS,
    ),
    Mutation(
        "milestone-at-last-epoch-allowed",
        "a milestone at the last epoch accepted (it never acts)",
        OPTIM,
        "        if m >= epochs:",
        "        if m > epochs:",
        SCHEDULE_TESTS,
    ),
    Mutation(
        "profile-milestones-unscaled",
        "a profile that shrinks DML's recipe keeps its 200-epoch milestones",
        "kdlab/profiles.py",
        "return scale_milestones(recipe.milestones, recipe.epochs, epochs)",
        "return recipe.milestones",
        SCHEDULE_TESTS,
    ),
    Mutation(
        "teacher-epochs-milestones-kept",
        "a teacher trained for --teacher-epochs keeps the student's milestones",
        "kdlab/reproduce/contract.py",
        "moved = scale_milestones(config.milestones, config.epochs, teacher_epochs)",
        "moved = config.milestones",
        SCHEDULE_TESTS,
    ),
    # -- issue 23: resume --------------------------------------------------------------------------
    Mutation(
        "resume-rng-not-restored",
        "the random-number state not restored on resume",
        CHECKPOINT,
        'torch.set_rng_state(state["rng_cpu"].cpu())',
        'state["rng_cpu"].cpu()',
        RESUME_TESTS,
    ),
    Mutation(
        "resume-scaler-not-restored",
        "the gradient scaler not restored on resume",
        CHECKPOINT,
        'self.scaler.load_state_dict(state["scaler"])',
        'state["scaler"]',
        RESUME_TESTS,
    ),
    Mutation(
        "resume-loader-not-restored",
        "the loader's shuffling and augmentation state not restored on resume",
        CHECKPOINT,
        'self.loader.load_state_dict(state["loader"])',
        'state["loader"]',
        RESUME_TESTS,
    ),
    # -- issue 23: evaluation ----------------------------------------------------------------------
    Mutation(
        "evaluate-in-train-mode",
        "evaluation with the networks left in train mode",
        CLASSIFICATION,
        "    for net in networks.values():\n        net.eval()",
        "    for net in networks.values():\n        net.train()",
        EVALUATE_TESTS,
    ),
    Mutation(
        "evaluate-builds-a-graph",
        "evaluation with gradients on (a graph built for every test batch)",
        CLASSIFICATION,
        "@torch.no_grad()\ndef evaluate(",
        "def evaluate(",
        EVALUATE_TESTS,
    ),
    Mutation(
        "evaluate-modes-not-restored",
        "evaluation leaves every network in eval mode",
        CLASSIFICATION,
        "        net.train(modes[name])",
        "        net.eval()",
        EVALUATE_TESTS,
    ),
    # -- issue 23: file operations cut half-way ------------------------------------------------------
    Mutation(
        "write-in-place",
        "files written in place, not to a temporary file renamed over the target",
        "kdlab/io.py",
        "        write(tmp)\n        os.replace(tmp, path)",
        "        write(path)\n        return path",
        ATOMIC_TESTS,
    ),
    Mutation(
        "clear-summary-not-first",
        "overwrite clears a run folder in any order: a cut leaves a finished-looking run",
        "kdlab/runfolder.py",
        '    for mark in sorted(out.rglob("summary.json")):\n        mark.unlink()\n',
        "",
        ATOMIC_TESTS,
    ),
    Mutation(
        "metrics-before-checkpoint",
        "metrics.jsonl written before the checkpoint: a cut puts it an epoch ahead",
        CALLBACKS,
        "        self.state.save(self.checkpoint, history)\n        self.start(history)",
        "        self.start(history)\n        self.state.save(self.checkpoint, history)",
        ATOMIC_TESTS,
    ),
    Mutation(
        "summary-before-networks",
        "summary.json (the mark of a finished run) written before the networks",
        CALLBACKS,
        "                save_network(path, net, self.archs[name], self.dataset)\n"
        '        write_json(self.out / "summary.json", run.summary)',
        '                write_json(self.out / "summary.json", run.summary)\n'
        "                save_network(path, net, self.archs[name], self.dataset)",
        ATOMIC_TESTS,
    ),
    Mutation(
        "archive-extract-in-place",
        "an archive (CIFAR, Tiny-ImageNet) extracted straight into the data folder (a cut leaves "
        "half a data set)",
        "kdlab/data/download.py",
        'with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder}.") as tmp:',
        'with __import__("contextlib").nullcontext(str(root)) as tmp:',
        ("tests/test_cifar.py",),
    ),
    Mutation(
        "archive-download-in-place",
        "an archive (CIFAR, Tiny-ImageNet) downloaded straight to its name (a cut leaves half of "
        "it)",
        "kdlab/data/download.py",
        "            good = atomic_write(\n"
        "                root / archive.file, lambda tmp: _download(url, tmp, archive.md5, progress)\n"
        "            )",
        "            _download(url, root / archive.file, archive.md5, progress)\n"
        "            good = root / archive.file",
        ("tests/test_cifar.py",),
    ),
    Mutation(
        "pathmnist-download-in-place",
        "PathMNIST downloaded in place (a cut leaves half an .npz the next load reads)",
        "kdlab/data/small.py",
        'medmnist.PathMNIST(split="test", download=True, root=tmp)',
        'medmnist.PathMNIST(split="test", download=True, root=str(root))',
        ("tests/test_pathmnist.py",),
    ),
    # -- issue 23: precision -------------------------------------------------------------------------
    Mutation(
        "auto-bf16-amx-only",
        "precision='auto' picks bf16 on CPUs with AMX only, not with AVX512-BF16",
        "kdlab/precision.py",
        'return cpu_has_amx() or _cpu_probe("_is_avx512_bf16_supported")',
        "return cpu_has_amx()",
        ("tests/test_train.py",),
    ),
]


def make_copy(folder: Path) -> Path:
    """The package, the tests, the notebooks (without their screenshots), the README and the
    project file under ``folder/repo`` (no data, no venv): the document tests read them all."""
    repo = folder / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "assets")
    for name in ("kdlab", "tests", "notebooks"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / "data").mkdir()
    return repo


def apply(repo: Path, mutation: Mutation) -> str | None:
    """Substitute in the copy; the reason it cannot be applied, or None."""
    path = repo / mutation.path
    if not path.is_file():
        return f"{mutation.path} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(mutation.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return f"target text {mutation.old!r} {where} in {mutation.path}"
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    return None


def run_tests(repo: Path, tests: tuple[str, ...], stop_early: bool) -> tuple[int, str]:
    """pytest on ``tests`` in the copy, with the copy first on the path: (exit code, output)."""
    env = dict(os.environ, PYTHONPATH=str(repo), KDLAB_PROFILE="smoke")
    env.pop("KDLAB_DATA", None)
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    if stop_early:
        command.insert(4, "-x")
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    """The first ``FAILED`` test of a pytest summary (``-ra``), or an empty string."""
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return line.split()[1]
    return ""


def baseline(tests: tuple[str, ...]) -> str | None:
    """Run ``tests`` on an unchanged copy: why the mutation results would mean nothing, or None."""
    with tempfile.TemporaryDirectory(prefix="kdlab-mutant-") as folder:
        repo = make_copy(Path(folder))
        env = dict(os.environ, PYTHONPATH=str(repo))
        probe = [sys.executable, "-c", "import kdlab; print(kdlab.__file__)"]
        found = subprocess.run(probe, cwd=repo, env=env, capture_output=True, text=True)
        if not found.stdout.strip().startswith(str(repo)):
            return f"the copy's kdlab is not the one imported: {found.stdout or found.stderr}"
        code, output = run_tests(repo, tests, stop_early=False)
        if code != 0:
            return "the tests fail without any mutation:\n" + output[-3000:]
    return None


def run_one(mutation: Mutation) -> tuple[str, str]:
    """``(outcome, detail)``: killed (by which test), survived, or error (why)."""
    with tempfile.TemporaryDirectory(prefix="kdlab-mutant-") as folder:
        repo = make_copy(Path(folder))
        problem = apply(repo, mutation)
        if problem:
            return "error", problem
        code, output = run_tests(repo, mutation.tests, stop_early=True)
    if code == 0:
        return "survived", "every test in " + ", ".join(mutation.tests) + " passed"
    if code == 1:
        return "killed", first_failure(output)
    return "error", f"pytest exited {code}: " + output.strip().splitlines()[-1][:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:26} {m.path:24} {m.bug}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation {', '.join(unknown)}; see --list")
    chosen = [known[n] for n in args.names] if args.names else MUTATIONS
    start = time.perf_counter()
    files = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    problem = baseline(files)
    if problem:
        print(f"mutate: error: {problem}", file=sys.stderr)
        return 2
    counts = {"killed": 0, "survived": 0, "error": 0}
    for m in chosen:
        began = time.perf_counter()
        outcome, detail = run_one(m)
        counts[outcome] += 1
        print(f"{outcome:8} {m.name:26} {time.perf_counter() - began:5.1f} s  {detail}", flush=True)
    seconds = time.perf_counter() - start
    print(
        f"mutation score: {counts['killed']}/{len(chosen)} killed, {counts['survived']} survived, "
        f"{counts['error']} errors ({seconds:.0f} s, baseline run included)"
    )
    return 0 if counts["killed"] == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
