"""The planes that follow the live state: the Nix plane's seams and the s6 services.

After every change of the live state (a transaction, a recovery, a boot into an older
entry) the GC roots, the build users, the graphics bridge, the declared /etc defaults
(machine/etc.py's 3-way merge of usr/share/factory/etc) and the service scan directory
are brought in line with it. The state is committed by then, so a failure here is a
warning, recorded as lagging (`seams_synced_tx`) and retried by the next command;
`onix nix seed` and `onix services --sync` redo it by hand. What the /etc merge has to
say (keys applied beside a local edit, a conflict written to FILE.onix-new) is a warning
too, but not a failure: it does not make the seams lag.
"""

from __future__ import annotations

from pathlib import Path

from onix.core.errors import OnixError, StateError
from onix.machine.session import Session


def check_seams(usr: Path) -> None:
    """Before a state becomes live: its service definitions load (names, dependencies,
    no cycles, no symlinks) and its declared nix.conf is one Nix would accept."""
    from onix.machine import etc
    from onix.nix import seed as nix_seed
    from onix.services import definitions

    if (usr / definitions.DEFINITIONS).is_dir():
        definitions.load_definitions(usr)
    declared = etc.declared(usr).get(nix_seed.NIX_CONF)  # refuses a symlink among them
    if declared is not None:
        _, errors = nix_seed.parse_conf(declared.data.decode(errors="replace"),
                                        where=f"usr/{declared.source}")
        if errors:
            raise StateError(errors[0], path=usr / declared.source,
                             hint="fix the stone's declared defaults")


def follow_live(s: Session, warnings: list[str]) -> dict:
    """The Nix seams and the services, for whatever state is live now; failures become
    warnings. Also run after a recovery or a reconcile changed the live state."""
    from onix.nix import plane as nix_plane

    out: dict = {}
    before = len(warnings)
    news: list[str] = []
    out["nix"] = nix_plane.after_change(s, warnings)
    out["etc"] = _etc_follow(s, warnings, news)
    out["services"] = _services_follow(s, warnings)
    if "/etc/nix/nix.conf" in (out["etc"] or {}).get("changed", []):
        # The daemon reads nix.conf once: new defaults mean nothing until it restarts.
        restart_service(s, "nix-daemon", warnings)
    with s.db.write() as c:  # "" = lagging: status says so, the next command retries
        s.db.set_meta(c, META_SEAMS_SYNCED,
                      str(s.db.last_done_tx(c)) if len(warnings) == before else "")
    warnings.extend(news)
    return out


def _etc_follow(s: Session, warnings: list[str], news: list[str]) -> dict | None:
    """The /etc merge for the live state (machine/etc.py). A file it could not merge is
    a failure (warning, lagging); its report on the others goes to `news`."""
    from onix.machine import etc
    from onix.nix import seed as nix_seed

    try:
        nix_seed.migrate_seeded(s)  # a root an older onix seeded: once
        report = etc.merge(s.paths)
    except (OnixError, OSError) as e:
        warnings.append(f"etc: {e.line() if isinstance(e, OnixError) else e}; "
                        "the next onix command retries (onix etc status shows the files)")
        return None
    warnings.extend(f"etc: {line}; the next onix command retries" for line in report.errors)
    news.extend(report.messages)
    return report.as_dict()


META_SEAMS_SYNCED = "seams_synced_tx"  # last transaction the Nix seams and services follow


def seams_if_needed(s: Session) -> list[str]:
    """Start of a mutating command: redo the seams a crash after the journal left undone."""
    if s.live_state() is None:
        return []
    with s.db.read() as c:
        if not s.db.behind(c, META_SEAMS_SYNCED):
            return []
    notes: list[str] = []
    follow_live(s, notes)
    return notes or ["brought the Nix seams and services up to date with the live state"]


def restart_service(s: Session, name: str, warnings: list[str]) -> None:
    from onix.services import s6
    from onix.services.live import default_scandir

    svc = default_scandir(s.paths.root) / name
    if not (svc / "supervise").is_dir() or not s6.svscan_running(svc.parent):
        return
    try:
        s6.restart(svc)
    except OnixError as e:
        warnings.append(f"service {name}: could not restart it for the new /etc/nix/nix.conf "
                        f"({e.message}); s6-svc -r {svc}")


def _services_follow(s: Session, warnings: list[str]) -> dict | None:
    """Reconcile the live s6 scan directory with the live state's service definitions."""
    from onix.services import reconcile as services
    from onix.services.definitions import DEFINITIONS
    from onix.services.live import default_scandir

    live = s.live_state()
    has_defs = (s.paths.usr / DEFINITIONS).is_dir()
    if live is None or (not has_defs and not default_scandir(s.paths.root).is_dir()):
        return None
    try:
        report = services.reconcile(root=s.paths.root, usr=s.paths.usr, state_id=live)
    except (OnixError, OSError) as e:
        warnings.append(f"services: {e.line() if isinstance(e, OnixError) else e}; "
                        "onix services --sync redoes it")
        return None
    for f in report.failed:
        warnings.append(f"service {f['name']} did not come up: {f['reason']}")
    return report.as_dict()


def seed_now(s: Session) -> dict:
    """`onix nix seed`: the Nix seams laid down again for the live state, runtime
    directories included, and nix-daemon restarted when its nix.conf changed."""
    from onix.nix import plane as nix_plane
    from onix.nix import seed as nix_seed

    report = nix_seed.seed_session(s, runtime=True, etc_files=True)
    after = nix_plane.after_change(s)
    after.pop("seed", None)  # the same accounts step, already in "changed"
    report.update(after)
    warnings: list[str] = [f"etc: {line}" for line in report["etc"]["errors"]]
    if "/etc/nix/nix.conf" in report["changed"]:
        restart_service(s, "nix-daemon", warnings)  # it reads nix.conf only once
    report["warnings"] = warnings + report["etc"]["messages"]
    return report
