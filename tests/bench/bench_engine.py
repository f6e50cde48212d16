"""ONIX benchmark suite, run by `just bench`.

    .venv/bin/python tests/bench/bench_engine.py [--quick] [--json-out FILE]

Each benchmark times ONIX (through the library, in-process, and where a user
would feel it also through the `onix` CLI as a subprocess) against a peer tool
measured in the same run on the same data, and prints the ratio next to the
goal from the issue. Nothing here asserts: these are measurements, not tests
(the file is deliberately not named test_*.py so pytest never collects it).

Every timing is the median of N runs (3 by default, 1 with --quick; cheap
operations use more). The page cache cannot be dropped here, so everything is
measured warm, and `sync` runs (untimed) before each timed run so that no run
pays for another's dirty pages. All trees live in one scratch directory (one
file system, so hardlinks work) that is removed at the end; nothing outside it
is touched. docs/benchmarks.md explains each benchmark and records results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from onix import api  # noqa: E402
from onix.core import fsutil  # noqa: E402
from onix.core.paths import read_state_id  # noqa: E402
from onix.machine import blit, importer, ownership, recovery, transaction, verify  # noqa: E402
from onix.machine.db import Database  # noqa: E402
from onix.machine.stone import StoneMeta, pack  # noqa: E402
from onix.machine.store import ImportBatch  # noqa: E402

MiB = 1 << 20
SEED = 20240601
IMPORT = "import (stream, hash, write, admit, record)"  # the phase label of import_stones()


# -- results -----------------------------------------------------------------------


@dataclass
class Row:
    name: str
    onix: float | None  # seconds, or MB/s when unit == "MB/s"
    peer: float | None = None
    peer_name: str = ""
    unit: str = "s"
    ratio: float | None = None  # onix/peer for times, onix/peer for throughput
    goal: str = "info"
    met: bool | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Suite:
    quick: bool
    runs: int
    rows: list[Row] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.name}: {fmt_value(row.onix, row.unit)}"
              + (f" vs {fmt_value(row.peer, row.unit)} ({row.peer_name})" if row.peer else "")
              + (f" -> {row.ratio:.2f}x" if row.ratio is not None else ""), flush=True)
        return row


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "MB/s":
        return f"{v:,.0f} MB/s"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- timing helpers ------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def settle() -> None:
    """Flush dirty pages (untimed) so the next timed run starts from a quiet disk."""
    os.sync()


def sh(cmd: list[str | Path], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL,
                          **kw)  # type: ignore[call-overload]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rmtree(p: Path) -> None:
    if p.exists() or p.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", str(p)], check=True)


class Phases:
    """Wall time spent inside selected library functions, patched while active.

    Only functions called a handful of times per transaction are wrapped, so
    the wrapping costs microseconds and does not disturb the timed runs.
    Phases nest (import_stones contains admit, which contains a syncfs).
    """

    def __init__(self, targets: list[tuple[object, str, str]]):
        self.targets = targets
        self.totals: dict[str, list[float]] = {}

    @contextmanager
    def run(self) -> Iterator[dict[str, float]]:
        this: dict[str, float] = {}
        saved = []
        for owner, attr, label in self.targets:
            orig = getattr(owner, attr, None)
            if orig is None:  # renamed in the engine: report the rest, skip this phase
                continue
            saved.append((owner, attr, orig))
            setattr(owner, attr, self._wrap(orig, label, this))
        try:
            yield this
        finally:
            for owner, attr, orig in reversed(saved):
                setattr(owner, attr, orig)
            for k, v in this.items():
                self.totals.setdefault(k, []).append(v)

    @staticmethod
    def _wrap(fn: Callable, label: str, acc: dict[str, float]) -> Callable:
        def wrapper(*a: object, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.perf_counter() - t0

        return wrapper

    def medians(self) -> dict[str, float]:
        """Median seconds per phase, in the order the phases were declared."""
        return {label: med(self.totals[label]) for _o, _a, label in self.targets
                if label in self.totals}


def tx_phases() -> Phases:
    from onix.machine import stone as stone_mod

    return Phases([
        (stone_mod, "Stone", "open and check stones"),
        (stone_mod, "digest_file", "  of which: blake3 of the stone file"),
        (recovery, "recover", "session: recover()"),
        (transaction, "_plan", "plan (load layouts + merge)"),
        (importer, "import_stones", IMPORT),
        (ImportBatch, "admit", "  of which: admit (chmod/chown/rename + syncfs)"),
        (Database, "add_stone", "  of which: DB layout rows"),
        (transaction, "canonical_digest", "layout digest"),
        (ownership, "nix_fingerprint", "/nix fingerprint (x2)"),
        (blit, "blit", "blit (hardlink farm)"),
        (fsutil, "syncfs", "syncfs (all calls)"),
        (transaction, "archive_old_tree", "archive old tree"),
        (transaction, "_finish", "links + activate + journal close"),
    ])


def verify_phases() -> Phases:
    return Phases([
        (verify, "_scan_store", "list and stat the store"),
        (verify, "_check_tree", "check trees (live + archived; beside the hashing)"),
        (verify, "_bad_objects", "hash store objects (this process's share)"),
        (Database, "referenced_objects", "DB: referenced objects"),
        (Database, "state_layout", "DB: state layout + merge (all calls)"),
    ])


# -- trees and stones ----------------------------------------------------------------


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_big_tree(dest: Path, rng: random.Random) -> tuple[int, int]:
    """20,000 × 4 KiB + 200 × 1 MiB of random bytes in 200 directories (+10 parents)."""
    base = dest / "usr" / "share" / "onix-bench"
    files = nbytes = 0
    for d in range(200):
        dd = base / f"g{d // 20:02d}" / f"d{d:03d}"
        dd.mkdir(parents=True)
        for i in range(100):
            write_file(dd / f"f{i:03d}.dat", rng.randbytes(4096))
        write_file(dd / "big.bin", rng.randbytes(MiB))
        files += 101
        nbytes += 100 * 4096 + MiB
    return files, nbytes


def make_many_tree(dest: Path, rng: random.Random, nfiles: int) -> tuple[int, int]:
    """`nfiles` small random files (64 B – 1 KiB) in nfiles/100 directories."""
    base = dest / "usr" / "lib" / "onix-many"
    ndirs = max(1, nfiles // 100)
    files = nbytes = 0
    for d in range(ndirs):
        dd = base / f"g{d // 50:03d}" / f"d{d:04d}"
        dd.mkdir(parents=True)
        for i in range(nfiles // ndirs):
            data = rng.randbytes(rng.randint(64, 1024))
            write_file(dd / f"m{i:03d}", data)
            files += 1
            nbytes += len(data)
    return files, nbytes


def make_tiny_stone(tmp: Path, tag: str) -> Path:
    src = tmp / f"src-tiny-{tag}"
    d = src / "usr" / "share" / "onix-bench-tiny"
    d.mkdir(parents=True)
    write_file(d / "stamp", f"tiny stone {tag}\n".encode())
    out = tmp / f"tiny-{tag}.stone"
    pack(src, out, StoneMeta(name="onix-bench-tiny", version=tag))
    rmtree(src)
    return out


def tree_bytes(top: Path) -> tuple[int, int]:
    files = nbytes = 0
    for dirpath, _dirs, names in os.walk(top):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            nbytes += st.st_size
    return files, nbytes


# -- the suite -----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.n = args.runs or (1 if args.quick else 3)
        self.suite = Suite(quick=args.quick, runs=self.n)
        self.rng = random.Random(SEED)
        exe = Path(sys.executable).parent / "onix"
        self.onix_cmd: list[str] = [str(exe)] if exe.exists() else [sys.executable, "-m", "onix"]
        self.many = args.many or (50_000 if args.quick else 200_000)
        self.tiny: list[Path] = []
        self.root_a: Path | None = None  # 20k-file root, reused from the import benchmark
        self.ostree_repo: Path | None = None  # its ostree twin, for `ostree checkout -H`

    # 1 ----------------------------------------------------------------------------
    def prepare_big(self) -> None:
        log("generating 20,000 × 4 KiB + 200 × 1 MiB (random) …")
        self.big_src = self.tmp / "src-big"
        t = timed(lambda: make_big_tree(self.big_src, self.rng))
        files, nbytes = tree_bytes(self.big_src / "usr")
        self.big_files, self.big_bytes = files, nbytes
        self.suite.facts.update(big_tree_files=files, big_tree_bytes=nbytes,
                                big_tree_generate_s=round(t, 3))
        log(f"  {files} files, {nbytes / MiB:.0f} MiB in {t:.1f} s; packing …")
        self.big_stone = self.tmp / "big.stone"
        tp = timed(lambda: pack(self.big_src, self.big_stone,
                                StoneMeta(name="onix-bench-big", version="1")))
        size = self.big_stone.stat().st_size
        self.suite.facts["big_stone_bytes"] = size
        self.suite.add(Row("pack 20k×4KiB + 200×1MiB", tp, note=f"stone {size / MiB:.0f} MiB",
                           samples={"onix": [tp]}))
        self.tiny = [make_tiny_stone(self.tmp, t) for t in ("a", "b")]

    # 3 ----------------------------------------------------------------------------
    def bench_import(self) -> None:
        log(f"import: api.install(fresh root, big.stone) vs ostree commit, {self.n}×")
        ph = tx_phases()
        t_onix, t_import, t_ostree = [], [], []
        for i in range(self.n):
            root = self.tmp / f"root-import-{i}"
            root.mkdir()
            settle()
            with ph.run() as this:
                t_onix.append(timed(lambda root=root: api.install(root,
                                                                          [self.big_stone])))
            if IMPORT in this:
                t_import.append(this[IMPORT])
            repo = self.tmp / f"ostree-{i}"
            sh(["ostree", f"--repo={repo}", "init", "--mode=bare"])
            settle()
            t_ostree.append(timed(lambda repo=repo: sh(
                ["ostree", f"--repo={repo}", "commit", "--branch=bench",
                 f"--tree=dir={self.big_src}"])))
            if i == 0:
                self.root_a, self.ostree_repo = root, repo
            else:
                rmtree(root)
                rmtree(repo)
        self.suite.phases["install on a fresh root (20k files)"] = ph.medians()
        o, p = med(t_onix), med(t_ostree)
        self.suite.add(Row("import: install big stone, fresh root", o, p, "ostree commit",
                           ratio=o / p, goal="≤ 0.5×", met=o / p <= 0.5,
                           samples={"onix": t_onix, "peer": t_ostree}))
        if not t_import:
            return
        oi = med(t_import)
        self.suite.add(Row("  import step alone", oi, p, "ostree commit", ratio=oi / p,
                           goal="info", note="import_stones() inside the same runs",
                           samples={"onix": t_import, "peer": t_ostree}))

    # 2 ----------------------------------------------------------------------------
    def bench_transaction(self) -> None:
        assert self.root_a is not None
        root = self.root_a
        log(f"transaction: install a tiny stone over 20k files vs cp -al, {self.n}×")
        ph = tx_phases()
        t_tx, t_cp, t_co, t_cli = [], [], [], []
        dest = self.tmp / "cp-al-usr"
        for i in range(self.n):
            settle()
            with ph.run():
                t_tx.append(timed(lambda i=i: api.install(root, [self.tiny[i % 2]])))
            settle()
            t_cp.append(timed(lambda: sh(["cp", "-al", root / "usr", dest])))
            rmtree(dest)
            settle()
            t_co.append(timed(lambda: sh(["ostree", f"--repo={self.ostree_repo}", "checkout",
                                          "-H", "bench", dest])))
            rmtree(dest)
        rmtree(self.ostree_repo)
        self.suite.phases["transaction over 20k files (library)"] = ph.medians()
        for i in range(self.n):
            settle()
            t_cli.append(timed(lambda i=i: sh([*self.onix_cmd, "install", "--root", root,
                                               "--json", self.tiny[(i + self.n) % 2]])))
        o, p, c = med(t_tx), med(t_cp), med(t_cli)
        self.suite.add(Row("transaction 20k files (library)", o, p, "cp -al", ratio=o / p,
                           goal="≤ 0.8×", met=o / p <= 0.8,
                           samples={"onix": t_tx, "peer": t_cp}))
        self.suite.add(Row("transaction 20k files (CLI)", c, p, "cp -al", ratio=c / p,
                           goal="info", note="onix install --json, end to end",
                           samples={"onix": t_cli, "peer": t_cp}))
        k = med(t_co)
        self.suite.add(Row("  same, vs ostree checkout -H", o, k, "ostree checkout -H",
                           ratio=o / k, goal="info", note="OSTree's own hardlink farm",
                           samples={"onix": t_tx, "peer": t_co}))

    # 4 ----------------------------------------------------------------------------
    def _rollbacks(self, root: Path, label: str) -> tuple[list[float], list[float]]:
        """Roll back, switch forward again (untimed), repeat; then the same via the CLI."""
        lib_runs = 3 if self.args.quick else 10
        cli_runs = 2 if self.args.quick else 5
        live = read_state_id(root / "usr")
        assert live is not None
        t_lib, t_cli = [], []
        log(f"rollback at {label}: {lib_runs}× library, {cli_runs}× CLI")
        for _ in range(lib_runs):
            settle()
            t_lib.append(timed(lambda: api.rollback(root)))
            api.activate(root, live)
        for _ in range(cli_runs):
            settle()
            t_cli.append(timed(lambda: sh([*self.onix_cmd, "rollback", "--root", root,
                                           "--json"])))
            api.activate(root, live)
        return t_lib, t_cli

    def bench_rollback(self) -> None:
        assert self.root_a is not None
        small_lib, small_cli = self._rollbacks(self.root_a, f"{self.big_files:,} files")
        log(f"generating {self.many:,} small files for the large rollback …")
        src = self.tmp / "src-many"
        tg = timed(lambda: make_many_tree(src, self.rng, self.many))
        files, nbytes = tree_bytes(src / "usr")
        self.suite.facts.update(many_tree_files=files, many_tree_bytes=nbytes,
                                many_tree_generate_s=round(tg, 3))
        stone = self.tmp / "many.stone"
        log(f"  {files:,} files in {tg:.1f} s; packing …")
        tp = timed(lambda: pack(src, stone, StoneMeta(name="onix-bench-many", version="1")))
        rmtree(src)
        k = f"{files // 1000}k"
        self.suite.add(Row(f"pack {k} small files", tp, samples={"onix": [tp]}))
        root = self.tmp / "root-many"
        root.mkdir()
        log(f"  installing {k} stone on a fresh root …")
        settle()
        ph = tx_phases()
        with ph.run():
            ti = timed(lambda: api.install(root, [stone]))
        self.suite.phases[f"install on a fresh root ({k} files)"] = ph.medians()
        self.suite.add(Row(f"install {k}-file stone, fresh root", ti, samples={"onix": [ti]}))
        log(f"  second state: tiny stone over {k} files vs cp -al …")
        settle()
        ph = tx_phases()
        with ph.run():
            tt = timed(lambda: api.install(root, [self.tiny[0]]))
        self.suite.phases[f"transaction over {k} files (library)"] = ph.medians()
        dest = self.tmp / "cp-al-many"
        settle()
        tc = timed(lambda: sh(["cp", "-al", root / "usr", dest]))
        rmtree(dest)
        self.suite.add(Row(f"transaction {k} files (library)", tt, tc, "cp -al", ratio=tt / tc,
                           goal="info", samples={"onix": [tt], "peer": [tc]}))
        big_lib, big_cli = self._rollbacks(root, f"{files:,} files")
        self._rollback_rows("library", small_lib, big_lib, k)
        self._rollback_rows("CLI", small_cli, big_cli, k)
        rmtree(root)
        stone.unlink()

    def _rollback_rows(self, how: str, small: list[float], big: list[float], k: str) -> None:
        s, b = med(small), med(big)
        self.suite.add(Row(f"rollback 20k files ({how})", s, goal="≤ 0.15 s", met=s <= 0.15,
                           samples={"onix": small}))
        # Flat: the large tree may cost at most 1.5× the small one (or 20 ms more,
        # whichever is larger, since these are tens of milliseconds and noisy).
        flat = b <= max(1.5 * s, s + 0.02)
        self.suite.add(Row(f"rollback {k} files ({how})", b, s, "same, 20k files",
                           ratio=b / s, goal="≤ 0.15 s, flat", met=b <= 0.15 and flat,
                           note="ratio = large/small; flat means ≤ 1.5× (or +20 ms)",
                           samples={"onix": big, "peer": small}))

    # 5 ----------------------------------------------------------------------------
    def bench_verify(self) -> None:
        assert self.root_a is not None
        root = self.root_a
        store = root / ".onix" / "store"
        _files, store_bytes = tree_bytes(store)
        log(f"verify vs b3sum over the store ({store_bytes / MiB:.0f} MiB), {self.n}×")
        ph = verify_phases()
        t_v, t_b, hashed = [], [], 0
        for _ in range(self.n):
            settle()
            with ph.run():
                t0 = time.perf_counter()
                report = api.verify(root)
                t_v.append(time.perf_counter() - t0)
            hashed = report.bytes_hashed
            if not report.clean:
                log(f"  note: verify found {len(report.problems)} problems (unexpected)")
            settle()
            t_b.append(timed(lambda: subprocess.run(
                ["bash", "-c", f"find '{store}' -type f -print0 | xargs -0 b3sum > /dev/null"],
                check=True)))
        self.suite.phases["verify (library)"] = ph.medians()
        onix_mbs = hashed / med(t_v) / 1e6
        peer_mbs = store_bytes / med(t_b) / 1e6
        self.suite.facts.update(verify_bytes_hashed=hashed, store_bytes=store_bytes)
        self.suite.add(Row("verify throughput (library)", onix_mbs, peer_mbs, "b3sum",
                           unit="MB/s", ratio=onix_mbs / peer_mbs, goal="≥ 0.7×",
                           met=onix_mbs / peer_mbs >= 0.7,
                           note=f"verify {med(t_v):.2f} s, b3sum {med(t_b):.2f} s",
                           samples={"onix_s": t_v, "peer_s": t_b}))

    def bench_verify_archived(self) -> None:
        """verify again once the transaction benchmark left archived states (one run)."""
        assert self.root_a is not None
        states = len(list((self.root_a / ".onix" / "states").iterdir()))
        settle()
        t = timed(lambda: api.verify(self.root_a))
        self.suite.add(Row(f"verify with {states} archived states", t, goal="info",
                           note="archived trees are checked too", samples={"onix": [t]}))

    # 6 ----------------------------------------------------------------------------
    def bench_status(self) -> None:
        assert self.root_a is not None
        runs = 10
        log(f"onix status wall time vs python -c pass, {runs}×")
        t_s, t_py = [], []
        for _ in range(runs):
            t_s.append(timed(lambda: sh([*self.onix_cmd, "status", "--root", self.root_a])))
            t_py.append(timed(lambda: sh([sys.executable, "-c", "pass"])))
        s, p = med(t_s), med(t_py)
        self.suite.add(Row("onix status (CLI)", s, p, "python -c pass", ratio=s / p,
                           goal="≤ 0.15 s", met=s <= 0.15,
                           note="ratio is against bare interpreter startup",
                           samples={"onix": t_s, "peer": t_py}))

    # 7 ----------------------------------------------------------------------------
    def bench_sync(self) -> None:
        """`onix sync` with nothing to do and `onix list updates` on a root holding every
        stone of the built set (stones/, made by ./scripts/stones), the local repository
        configured: what a script or a prompt polls."""
        stones, pub = REPO / "stones", REPO / ".cache/keys/local.pub"
        if not (stones / "index.json").is_file() or not pub.is_file():
            log("sync: no stones/ (./scripts/stones builds them); skipped")
            self.suite.add(Row("onix sync, nothing to do (CLI)", None, goal="≤ 0.3 s",
                               note="skipped: run ./scripts/stones first"))
            return
        root = self.tmp / "sync-root"
        root.mkdir()
        api.repo_add(root, name="local", uri=str(stones), public_key=pub.read_text().strip())
        names = sorted({a["name"] for a in api.list_available(root)})
        api.install(root, names)
        runs = max(self.n, 5)
        log(f"sync with nothing to do and list updates over {len(names)} stones, {runs}×")
        t_sync, t_list, t_py = [], [], []
        for _ in range(runs):
            t_sync.append(timed(lambda: sh([*self.onix_cmd, "sync", "--yes", "--root", root])))
            t_list.append(timed(lambda: sh([*self.onix_cmd, "list", "updates", "--root",
                                            root])))
            t_py.append(timed(lambda: sh([sys.executable, "-c", "pass"])))
        p = med(t_py)
        for label, ts in ((f"onix sync, nothing to do, {len(names)} stones (CLI)", t_sync),
                          (f"onix list updates, {len(names)} stones (CLI)", t_list)):
            o = med(ts)
            self.suite.add(Row(label, o, p, "python -c pass", ratio=o / p, goal="≤ 0.3 s",
                               met=o <= 0.3, note="ratio is against bare interpreter startup; "
                               "sync refreshes the (local) index first",
                               samples={"onix": ts, "peer": t_py}))

    # extra: prune ------------------------------------------------------------------
    def bench_prune(self) -> None:
        assert self.root_a is not None
        settle()
        t0 = time.perf_counter()
        r = api.prune(self.root_a, keep=1)
        t = time.perf_counter() - t0
        states = len(r.detail["states"])
        self.suite.add(Row(f"prune --keep 1 ({states} states of 20k files)", t,
                           samples={"onix": [t]}))

    def run(self) -> Suite:
        self.prepare_big()
        self.bench_import()
        self.bench_verify()  # while the root holds exactly one state, like the store b3sum reads
        self.bench_status()
        self.bench_sync()
        self.bench_transaction()
        self.bench_verify_archived()
        self.bench_rollback()
        self.bench_prune()
        return self.suite


# -- output --------------------------------------------------------------------------


def table(suite: Suite) -> str:
    head = ("benchmark", "onix", "peer", "ratio", "goal", "met?")
    rows = []
    for r in suite.rows:
        peer = f"{fmt_value(r.peer, r.unit)} {r.peer_name}" if r.peer is not None else "—"
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        rows.append((r.name, fmt_value(r.onix, r.unit), peer,
                     "—" if r.ratio is None else f"{r.ratio:.2f}×", r.goal, met))
    widths = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]
    right = {1, 3}
    lines = []
    for i, row in enumerate((head, *rows)):
        cells = [c.rjust(w) if j in right else c.ljust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def phase_report(suite: Suite) -> str:
    out = []
    for what, phases in suite.phases.items():
        out.append(f"{what} (median seconds per run):")
        for label, secs in phases.items():
            out.append(f"  {label:<50} {secs:7.3f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 run each and 50k instead of 200k files for the large rollback")
    ap.add_argument("--runs", type=int, default=0, help="runs per benchmark (default 3, quick 1)")
    ap.add_argument("--many", type=int, default=0,
                    help="files in the large rollback tree (default 200000, quick 50000)")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--tmp", type=Path, default=Path(os.environ.get("ONIX_BENCH_TMP",
                                                                    "/var/tmp")),
                    help="scratch parent directory (one file system; default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    missing = [t for t in ("ostree", "b3sum", "cp", "find", "xargs") if not shutil.which(t)]
    if missing:
        print(f"error: missing tools: {', '.join(missing)}; ./scripts/bootstrap installs them",
              file=sys.stderr)
        return 2
    args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="onix-bench-", dir=args.tmp))
    started = time.perf_counter()
    log(f"scratch: {tmp} (warm cache; sync before each timed run)")
    try:
        suite = Bench(args, tmp).run()
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            log("cleaning up …")
            rmtree(tmp)
    total = time.perf_counter() - started
    suite.facts.update(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), cpus=os.cpu_count(),
        python=platform.python_version(), kernel=platform.release(),
        machine=platform.machine(), total_s=round(total, 1), cache="warm")
    print()
    print(f"ONIX benchmarks — {suite.facts['date']}, {os.cpu_count()} CPUs, "
          f"Python {suite.facts['python']}, median of {suite.runs} run(s)"
          f"{' (quick)' if suite.quick else ''}, warm cache")
    print()
    print(table(suite))
    print()
    notes = [f"  {r.name.strip()}: {r.note}" for r in suite.rows if r.note]
    if notes:
        print("notes:")
        print("\n".join(notes))
        print()
    print(phase_report(suite))
    print()
    met = [r for r in suite.rows if r.met is True]
    missed = [r for r in suite.rows if r.met is False]
    print(f"goals met: {len(met)}; missed: {len(missed)}"
          + (f" ({'; '.join(r.name.strip() for r in missed)})" if missed else "")
          + f"; total {total:.0f} s")
    if args.json_out:
        data = {"facts": suite.facts, "quick": suite.quick, "runs": suite.runs,
                "rows": [asdict(r) for r in suite.rows], "phases": suite.phases}
        args.json_out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
