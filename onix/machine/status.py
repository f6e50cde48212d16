"""`onix status`: what is live, how many states, how big the store is — fast.

This path must start in well under 0.15 s, and importing SQLAlchemy alone
costs ~0.2 s, so it reads the database with the standard library's sqlite3 in
read-only mode (the schema in db.py is the contract). Only when the journal
shows an interrupted transaction does it load the engine to recover, because
the next onix run after a crash must repair the root, whichever command it is.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import quote

from onix.core.errors import OnixError
from onix.core.lock import lock_held
from onix.core.paths import RootPaths, read_state_id


def _query(db: Path) -> dict:
    con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=5)
    try:
        running = con.execute("SELECT id, kind, from_state, to_state FROM transactions "
                              "WHERE status = 'running' ORDER BY id LIMIT 1").fetchone()
        states = {r[0]: {"fstx": r[1], "summary": r[2], "status": r[3], "pinned": bool(r[4])}
                  for r in con.execute("SELECT id, fstx, summary, status, pinned FROM states "
                                       "WHERE status != 'pending'")}
        row = con.execute("SELECT value FROM meta WHERE key = 'store_bytes'").fetchone()
        last = con.execute("SELECT kind, nix_report FROM transactions WHERE status = 'done' "
                           "AND nix_report IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('boot_default', "
                                "'boot_fallback', 'boot_synced_tx', 'seams_synced_tx')")
                    .fetchall())
        last_done = con.execute("SELECT MAX(id) FROM transactions "
                                "WHERE status = 'done'").fetchone()[0]
        made_live = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT to_state, kind, MAX(id) FROM transactions WHERE status = 'done' "
            "AND to_state IS NOT NULL AND detail NOT LIKE '%\"staged\": true%' "
            "GROUP BY to_state")}
    finally:
        con.close()
    return {"running": running, "states": states, "store_bytes": int(row[0]) if row else 0,
            "last_nix": {"kind": last[0], "nix": last[1]} if last else None,
            "meta": meta, "made_live": made_live, "last_done": last_done or 0}


def status(paths: RootPaths) -> dict:
    if not paths.db.exists():
        return {"root": str(paths.root), "initialized": False, "active_state": None,
                "active_fstx": None, "states": 0, "store_bytes": 0, "notes": [
                    "no ONIX database here yet; onix install creates one"]}
    info = _query(paths.db)
    recovered: list[str] = []
    in_progress = False
    live = read_state_id(paths.usr)
    db_active = [i for i, s in info["states"].items() if s["status"] == "active"]
    drifted = live in info["states"] and db_active != [live]
    if info["running"] or drifted:
        # A running journal row is either a transaction in progress (its onix holds the
        # lock) or one a crash interrupted (nobody does). Only the second is ours to repair.
        in_progress = lock_held(paths)
        if not in_progress:
            from onix.machine.recovery import opened

            try:
                with opened(paths, create=False, wait=False) as s:
                    recovered = s.recovered
            except (OSError, OnixError):
                pass  # not allowed to repair (read-only, not root), or someone else just
                # started, or the repair needs a human: report what we see
            info = _query(paths.db)
    st = info["states"].get(live) if live is not None else None
    notes = list(recovered)
    if info["running"] and in_progress:
        notes.append(f"{info['running'][1]} in progress (journal {info['running'][0]})")
    elif info["running"]:
        notes.append(f"an interrupted {info['running'][1]} is pending; run onix as root to "
                     "recover it")
    if live is None and paths.usr.is_dir() and any(paths.usr.iterdir()):
        notes.append("/usr has no readable .stateID; onix refuses changes until it is restored")
    if live is not None and st is None:
        notes.append(f"/usr/.stateID names state {live}, which the database does not know")
    db_active = [i for i, s in info["states"].items() if s["status"] == "active"]
    if st is not None and db_active != [live]:
        notes.append(f"database marks {db_active} active, but /usr is state {live}")
    boot, boot_notes = _boot(paths, info, live)
    notes.extend(boot_notes)
    etc, rows, etc_notes = _etc(paths)
    notes.extend(etc_notes)
    nix, nix_notes = _nix(paths, st["fstx"] if st else None, rows)
    notes.extend(nix_notes)
    if st is not None and info["meta"].get("seams_synced_tx") not in (None, str(
            info["last_done"])) and not info["running"]:
        notes.append("the Nix seams or services lag behind the live state (a crash, or a "
                     "warning at the last change); the next onix command redoes them")
    return {
        "root": str(paths.root),
        "boot_entry": boot.get("default"),
        "boot": boot,
        "nix": nix,
        "etc": etc,
        "initialized": True,
        "active_state": live,
        "active_fstx": st["fstx"] if st else None,
        "summary": st["summary"] if st else None,
        "states": len(info["states"]),
        "pinned": sorted(i for i, s in info["states"].items() if s["pinned"]),
        "store_bytes": info["store_bytes"],
        "staged": _staged(info, live),
        "last_nix_check": info["last_nix"],
        "notes": notes,
    }


def _staged(info: dict, live: int | None) -> dict | None:
    """A state built for the next boot (`onix sync --boot`): the boot default, newer than
    the live state, and never live yet."""
    raw = info["meta"].get("boot_default", "")
    sid = int(raw) if raw.isdigit() else None
    if sid is None or sid == live or sid not in info["states"] or sid in info["made_live"]:
        return None
    if live is not None and sid < live:
        return None
    st = info["states"][sid]
    return {"state": sid, "fstx": st["fstx"], "summary": st["summary"]}


def _boot(paths: RootPaths, info: dict, live: int | None) -> tuple[dict, list[str]]:
    """The default entry as loader.conf names it (read, not assumed), and why the live
    state is not the newest or not the default, when it is not."""
    from onix.boot import bls, esp

    try:
        dirs = esp.find(paths.root)
    except OnixError as e:
        return {"esp": None, "default": None}, [f"boot: {e.line()}"]
    notes: list[str] = []
    if dirs is None:
        return {"esp": None, "default": None}, notes
    default = bls.read_default(dirs.esp)
    out = {"esp": str(dirs.esp), "default": default}
    entries = bls.list_entries(dirs.boot)
    if default is not None and not (bls.entries_dir(dirs.boot) / default).is_file():
        notes.append(f"loader.conf names {default}, which does not exist: systemd-boot "
                     "would boot the top entry; run onix boot sync")
    states = info["states"]
    if live is None or live not in states:
        return out, notes
    meta = info["meta"]
    fallback = json.loads(meta["boot_fallback"]) if meta.get("boot_fallback") else None
    boot_default = int(meta["boot_default"]) if meta.get("boot_default", "").isdigit() else None
    newest = max(states)
    if meta.get("boot_synced_tx") != str(info["last_done"]) and not info["running"]:
        notes.append("the boot files lag behind the state log (an interrupted or failed "
                     "sync); the next onix command updates them, or run onix boot sync")
    if fallback and fallback.get("booted") == live:
        notes.append(f"state {fallback['failed']} failed to boot (its entry "
                     f"{fallback['entry']} ran out of tries: it did not come up, or came up "
                     f"without onix boot mark-good); systemd-boot fell back to state {live} "
                     "on its own, and it is the boot default now")
    elif _staged(info, live) is not None:
        pass  # `staged:` says it
    elif boot_default is not None and boot_default != live and boot_default in states:
        kind, _tx = info["made_live"].get(live, (None, None))
        how = "chosen at boot (menu or one-time default)" if kind == "reconcile" else \
            "live now"
        notes.append(f"this boot runs state {live} ({how}); the boot default is state "
                     f"{boot_default}, which the next boot starts")
    elif live != newest and _staged(info, live) is None:
        kind, tx = info["made_live"].get(live, (None, None))
        why = (f"onix {kind} made it live (transaction {tx})" if kind in ("rollback", "activate")
               else "it was made live at boot from an older entry" if kind == "reconcile"
               else "it is the one the user chose")
        notes.append(f"the live state {live} is not the newest ({newest}): {why}")
    live_entry = entries.get(states[live]["fstx"])
    if live_entry is None and meta.get("boot_synced_tx") == str(info["last_done"]):
        notes.append(f"the live state {live} has no boot entry (no kernel?); the next boot "
                     f"starts {default or 'the top entry'}")
    if live_entry is not None and live_entry.tries_left is not None:
        notes.append(f"boot entry {live_entry.file} is not blessed yet; once this boot is "
                     "good, run onix boot mark-good")
    return out, notes


def _etc(paths: RootPaths) -> tuple[dict | None, list[dict], list[str]]:
    """The /etc drift, per key (machine/etc.py: stdlib only, plain file reads), and its
    rows for the Nix lines; None when no state declares a file and nothing is recorded."""
    from onix.machine import etc

    try:
        rows = etc.status(paths)
    except (OnixError, OSError) as e:
        return None, [], [f"etc: {e.line() if isinstance(e, OnixError) else e}"]
    if not rows:
        return None, [], []
    return etc.drift_of(rows), rows, []


def _nix(paths: RootPaths, fstx: str | None,
         rows: list[dict]) -> tuple[dict | None, list[str]]:
    """The Nix plane's seams, each computed: daemon handshake, /etc drift, graphics bridge."""
    from onix.nix import accounts as nix_accounts
    from onix.nix import bridge as nix_bridge
    from onix.nix import daemon as nix_daemon
    from onix.nix import seed as nix_seed

    if not nix_seed.declares_nix(paths.usr) and not paths.nix.exists():
        return None, []
    notes = [f"nix: {p} (" + ("onix nix seed adds it" if "missing" in p else
                              "fix it by hand: onix keeps the build ids fixed") + ")"
             for p in nix_accounts.check_accounts(paths.root)]
    if paths.nix.exists():
        daemon, reason = nix_daemon.daemon_health(paths)
    else:
        daemon, reason = "not set up", "no /nix yet (onix nix seed, then start nix-daemon)"
    d = nix_seed.drift(paths, usr=paths.usr, rows=rows)
    return {"daemon": daemon, "daemon_reason": reason, "drift": d.as_dict(),
            "opengl": nix_bridge.opengl_status(paths, fstx=fstx, usr=paths.usr)}, notes
