"""Never lose an object, never stall: fault-injection trials against the real `sluice up`, in a loop.

    .venv/bin/python bench/faults.py [--trials 20] [--seed 1] [--kinds ingest,cli,push,deploy,worker,pause,restart]
                                     [--objects 12] [--max-kills 1] [--workdir DIR] [--keep]

The same trials as tests/e2e/test_faults.py (the harness is tests/e2e/faults.py), with random kill
points and as many trials as asked. Setup, once: `sluice up` on a fresh data dir (embedded
defaults: SQLite catalog and bus, local object store, local Ray), namespace `acme`, the test hash
embedder made 0.15 s slower per object (so a job can be cut in the middle) pushed with `sluice
plugin push`, a collection over bucket `notes`; then a clean run of `--objects` small text objects
through the drop folder, whose counts every trial is compared with.

Each trial copies the seeded data dir, starts `sluice up` on it and, by kind:
- `ingest` / `cli`: drops the objects (or uploads them with `sluice ingest`) and `kill -9`s the whole
  stack (its session: REST, functions, Ray, plugin hosts) at a random point: a named stage (a file
  taken from the drop folder, an object queued, a task created, documents being written, a task
  completed) or a uniform random delay within the clean run's ingest time; then starts it again
  (a `sluice ingest` cut short is run again, as a user would); with `--max-kills K`, up to K-1
  more times while it recovers (a task resumed after a crash, crashing again);
- `push`: `kill -9` during `sluice plugin push` of a new version (upload CONFIRMED, scan done and
  register running, or a random delay), restart: the upload must end REGISTERED or FAILED with
  reasons, the version registered once;
- `deploy`: `kill -9` during `sluice plugin deploy` (QUEUED, PENDING, IN_PROGRESS, or random),
  restart: DEPLOYED and answering, or FAILED with its error;
- `worker`: `kill -9` of the Ray worker running the plugin's actor mid-job, the stack stays up;
- `pause` / `restart` / `restart-term`: the Kafka bus on a Tansu broker of its own, paused
  (SIGSTOP/SIGCONT), or killed (SIGTERM'd) and started again on the same port (memory storage: its
  data is gone), as the drop folder publishes.

Then it waits until nothing is in flight and counts: objects lost (in the bucket, no `written`
record), duplicated (two documents of one object's chunk, or more documents than the clean run),
stuck (a task QUEUED/RUNNING, a queue entry or lease left, an upload CONFIRMED/SCANNED, a deployment
QUEUED/PENDING/IN_PROGRESS, an outbox entry or idempotency claim never finished). Prints one row
per trial as it ends, then a summary per kind; exits 1 when any trial lost, duplicated or left
something stuck (for `restart`, objects announced before the broker's data was lost are reported,
not counted as failures: see `broker_trial`). `--seed` makes the kinds and kill points repeatable
(the timing of the stack is not).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import faults  # noqa: E402

KINDS = ("ingest", "cli", "push", "deploy", "worker", "pause", "restart", "restart-term")
INGEST_POINTS = (*faults.KILL_POINTS, "random", "random")
CLI_POINTS = tuple(p for p in INGEST_POINTS if p != "dropped")  # `sluice ingest` does not use the drop folder
AGAIN_POINTS = ("running", "mid_job", "random")
"""Where a restarted stack is killed again (its task resumed)."""
PUSH_POINTS = ("CONFIRMED", "scanned", "random")
DEPLOY_POINTS = ("QUEUED", "PENDING", "IN_PROGRESS", "random")


def one(kind: str, n: int, workdir: Path, seed: faults.Seed, items: dict[str, str], clean: faults.Census,
        window: float, rng: random.Random, max_kills: int = 1) -> faults.Trial:
    trial_dir = workdir / f"trial-{n:03d}-{kind}"
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    if kind in ("ingest", "cli"):
        point = rng.choice(INGEST_POINTS if kind == "ingest" else CLI_POINTS)
        then = tuple(rng.choice(AGAIN_POINTS) for _ in range(rng.randrange(max_kills)))  # crash the recovery too
        return faults.ingest_kill_trial(seed, trial_dir, items, clean, point=point, rng=rng, window=window,
                                        source="drop" if kind == "ingest" else "cli", then=then)
    if kind == "push":
        return faults.push_kill_trial(seed, trial_dir, point=rng.choice(PUSH_POINTS), rng=rng, window=4.0)
    if kind == "deploy":
        return faults.deploy_kill_trial(seed, trial_dir, point=rng.choice(DEPLOY_POINTS), rng=rng, window=6.0)
    if kind == "worker":
        return faults.worker_kill_trial(seed, trial_dir, items, clean, rng=rng)
    return faults.broker_trial(seed, trial_dir, items, clean, mode=kind.split("-")[0], rng=rng, crash=kind != "restart-term")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=len(KINDS), help="trials to run (default: one of each kind)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of kinds and kill points (default: random)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--objects", type=int, default=12, help="small text objects per ingest trial (default 12)")
    parser.add_argument("--max-kills", type=int, default=1, help="ingest trials kill the stack up to this many times, "
                        "each restart's recovery included (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="where data dirs and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs of every `sluice up` run)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the running trial's stack on the way out
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {','.join(KINDS)}")
    seed_value = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed_value)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sluice-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"faults: seed {seed_value}, work dir {workdir}", flush=True)

    started = time.monotonic()
    seed = faults.Seed.load(workdir) or faults.seed(workdir)  # a --workdir kept from an earlier run is reused
    items = faults.texts(args.objects)
    shutil.rmtree(workdir / "clean", ignore_errors=True)
    clean, window = faults.clean_run(seed, workdir, items)
    print(f"clean run: {clean.line()} (ingest took {window:.1f}s; setup {time.monotonic() - started:.0f}s)", flush=True)

    order = [kinds[i % len(kinds)] for i in range(args.trials)]
    rng.shuffle(order)
    trials: list[faults.Trial] = []
    print(f"{'trial':<22} {'kill point':<18} {'at':>7} outcome", flush=True)
    for n, kind in enumerate(order, 1):
        try:
            trial = one(kind, n, workdir, seed, items, clean, window, rng, args.max_kills)
        except Exception as exc:  # noqa: BLE001 - a harness failure is one row, the loop goes on
            trial = faults.Trial(kind, "-", None, faults.Census(), [f"harness: {type(exc).__name__}: {exc}"[:400]], 0.0)
        trials.append(trial)
        print(f"{trial.row()}  ({trial.seconds:.0f}s)", flush=True)
        if trial.ok and not args.keep:  # ~100 MB each (the vector index's files); the log stays
            shutil.rmtree(workdir / f"trial-{n:03d}-{kind}" / "data", ignore_errors=True)

    by_kind: dict[str, list[faults.Trial]] = defaultdict(list)
    for trial in trials:
        by_kind[trial.name].append(trial)
    print(f"\n{'kind':<22} {'trials':>6} {'ok':>4} {'lost':>5} {'dup':>4} {'stuck':>6}")
    for name, group in sorted(by_kind.items()):
        print(f"{name:<22} {len(group):>6} {sum(t.ok for t in group):>4} {sum(len(t.census.lost) for t in group):>5} "
              f"{sum(len(t.census.duplicates) for t in group):>4} {sum(len(t.census.stuck) for t in group):>6}")
    failed = [t for t in trials if not t.ok]
    print(f"\n{len(trials)} trials in {time.monotonic() - started:.0f}s, {len(failed)} failed (seed {seed_value})")
    if args.keep or failed:
        print(f"logs: {workdir}/trial-*/data.up.log")
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
