"""Named mutations: plant one known bug at a time in a copy of kdlab and check a test catches it.

Each mutation is an exact source substitution in ``kdlab/`` (the bugs of issue 15: plausible
slips in the losses, the methods and the metrics). For each one the script copies ``kdlab/``,
``tests/`` and ``pyproject.toml`` to a throwaway folder, applies the substitution there, and runs
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
MUTUAL_TESTS = ("tests/test_mutual.py",)
METRIC_TESTS = ("tests/test_metrics.py", "tests/test_kdml.py")


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
]


def make_copy(folder: Path) -> Path:
    """The package, the tests and the project file under ``folder/repo`` (no data, no venv)."""
    repo = folder / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("kdlab", "tests"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
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
