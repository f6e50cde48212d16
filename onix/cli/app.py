"""The `onix` command: a thin skin over the library modules.

Each command parses options, calls one library function, and prints its
result as JSON (--json) or as a few calm lines. Library errors (OnixError)
become one `error: <path>: <what>; <what to do>` line and a non-zero exit.
Heavy modules are imported inside the commands so `onix status` starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from onix.cli.output import (
    RichProgress,
    console,
    error,
    format_status,
    human_bytes,
    print_json,
)
from onix.core.errors import OnixError, from_exception

app = typer.Typer(help="ONIX machine plane: stones, states, rollback.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
state_app = typer.Typer(help="List, inspect, switch, pin and remove states.",
                        no_args_is_help=True)
stone_app = typer.Typer(help="Make and read stone files.", no_args_is_help=True)
app.add_typer(state_app, name="state")
boot_app = typer.Typer(help="Boot entries, the initrd, systemd-boot: the boot plane.",
                       no_args_is_help=True)
app.add_typer(stone_app, name="stone")
app.add_typer(boot_app, name="boot")
nix_app = typer.Typer(help="The Nix plane's machine-side seams (onix-nix-integration).",
                      no_args_is_help=True)
app.add_typer(nix_app, name="nix")

Root = Annotated[Path, typer.Option("--root", help="Operate on this root instead of /.",
                                    file_okay=False)]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NoWait = Annotated[bool, typer.Option("--no-wait",
                                      help="Fail at once if another onix holds the lock.")]


def _escaped(data: Any) -> Any:
    """Data with rich markup neutralised: a stone's summary like 'x [/b]' is text, not a tag."""
    from rich.markup import escape

    if isinstance(data, str):
        return escape(data)
    if isinstance(data, dict):
        return {k: _escaped(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_escaped(v) for v in data]
    return data


def _run(as_json: bool, fn: Callable[[], Any], human: Callable[[Any], None], *,
         rich_output: bool = True) -> Any:
    try:
        result = fn()
    except OnixError as e:
        error(e.line(), as_json=as_json, data=e.as_dict())
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        error("interrupted; the root holds the old or the new state (onix status tells which)")
        raise typer.Exit(130) from None
    except Exception as exc:
        known = from_exception(exc)
        if known is None:
            raise  # a bug: the traceback is the useful report
        error(known.line(), as_json=as_json, data=known.as_dict())
        raise typer.Exit(known.exit_code) from None
    data = result.as_dict() if hasattr(result, "as_dict") else result
    if as_json:
        print_json(data)
    else:
        human(_escaped(data) if rich_output else data)
    return data


def _progress(as_json: bool) -> Any:
    p = RichProgress()
    if as_json:
        p.enabled = False
    return p


def _print_result(r: dict) -> None:
    out = console()
    for line in r.get("recovered") or []:
        out.print(f"[yellow]recovered:[/] {line}")
    if not r["changed"]:
        out.print(f"nothing to do ({r['summary']})")
        return
    if r.get("fstx"):
        out.print(f"state {r['to_state']} [bold]{r['fstx']}[/] active  "
                  f"[dim](was {r['from_state'] if r['from_state'] is not None else 'none'})[/]")
    out.print(r["summary"])
    for w in r.get("warnings") or []:
        out.print(f"[yellow]warning:[/] {w}")


def _print_summary_and_warnings(r: dict) -> None:
    out = console()
    for line in r.get("recovered") or []:
        out.print(f"[yellow]recovered:[/] {line}")
    out.print(r["summary"])
    for w in r.get("warnings") or []:
        out.print(f"[yellow]warning:[/] {w}")


# -- transactions ----------------------------------------------------------------


@app.command()
def install(targets: Annotated[list[str], typer.Argument(
                metavar="STONE...", help="Stone names (from repositories), provider strings "
                "such as 'binary(rg)', or .stone files.")],
            root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Install or replace stones, with their dependencies; one transaction, one new state."""
    from onix import api

    _run(json, lambda: api.install(root, targets, wait=not no_wait,
                                   progress=_progress(json)), _print_result)


@app.command()
def remove(names: Annotated[list[str], typer.Argument(help="Installed stone names.")],
           keep_orphans: Annotated[bool, typer.Option(
               "--keep-orphans", help="Keep dependencies nothing asked for any more.")] = False,
           root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Remove stones by name, and dependencies only they needed; one new state."""
    from onix import api

    _run(json, lambda: api.remove(root, names, orphans=not keep_orphans,
                                  wait=not no_wait, progress=_progress(json)),
         _print_result)


@app.command()
def search(term: Annotated[str, typer.Argument(help="Part of a name, summary or provider.")],
           root: Root = Path("/"), json: Json = False) -> None:
    """Stones the configured repositories offer."""
    from onix import api

    def human(rows: list) -> None:
        if not rows:
            console().print(f"no stone matches {term!r}")
        for a in rows:
            console().print(f"{a['name']} {a['version']}-{a['release']}  [dim]{a['repo']}[/]  "
                            f"{a['summary']}")

    _run(json, lambda: [a.as_dict() for a in api.search(root, term)], human)


@app.command()
def info(name: str, root: Root = Path("/"), json: Json = False) -> None:
    """One stone: what the live state has and what the repositories offer."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        mine = r["installed"]
        if mine:
            out.print(f"[bold]{mine['name']}[/] {mine['version']}-{mine['release']} installed"
                      + (" (explicit)" if mine["explicit"] else " (as a dependency)"))
            out.print(f"  {mine['summary']}  [dim]{mine['license']}[/]")
            for k in ("provides", "depends"):
                if mine[k]:
                    out.print(f"  {k}: {', '.join(mine[k])}")
        else:
            out.print(f"[bold]{r['name']}[/] not installed")
        for a in r["available"]:
            out.print(f"available: {a['version']}-{a['release']} from {a['repo']} "
                      f"({human_bytes(a['size'])}) {a['location']}")

    _run(json, lambda: api.info(root, name), human)


def _print_switch(r: dict) -> None:
    out = console()
    for line in r.get("recovered") or []:
        out.print(f"[yellow]recovered:[/] {line}")
    out.print(f"state {r['to_state']} [bold]{r['fstx']}[/] active  [dim](was {r['from_state']})[/]")
    out.print("plane: machine")
    out.print(f"/nix: {r['nix']}")
    for w in r.get("warnings") or []:
        out.print(f"[yellow]warning:[/] {w}")


@app.command()
def rollback(to: Annotated[int | None, typer.Option("--to", help="State id to go back to.")] = None,
             root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Go back to the previous state (or --to ID). /nix is checked before and after."""
    from onix import api

    _run(json, lambda: api.rollback(root, to=to, wait=not no_wait), _print_switch)


@app.command()
def prune(keep: Annotated[int, typer.Option("--keep", help="Newest states to keep.")] = 3,
          root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Remove old states (never active or pinned ones) and store content nothing uses."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        d = r["detail"]
        if d["states"]:
            out.print("removed states: " + ", ".join(str(i) for i in d["states"]))
        else:
            out.print("no states to remove")
        out.print(f"removed {d['objects']} store objects, freed {human_bytes(d['bytes_freed'])}")
        out.print("plane: machine")
        out.print(f"/nix: {r['nix']}")
        for line in r.get("recovered") or []:
            out.print(f"[yellow]recovered:[/] {line}")
        for w in r.get("warnings") or []:
            out.print(f"[yellow]warning:[/] {w}")

    _run(json, lambda: api.prune(root, keep=keep, wait=not no_wait,
                                 progress=_progress(json)), human)


@app.command()
def verify(fix: Annotated[bool, typer.Option("--fix", help="Restore from the store.")] = False,
           root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Re-hash the store; check /usr and every archived state against their layouts."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        for line in r["recovered"]:
            out.print(f"[yellow]recovered:[/] {line}")
        for p in r["fixed"]:
            out.print(f"fixed {p['problem']}: {p['path']}")
        for p in r["problems"]:
            out.print(f"[red]{p['problem']}[/]: {p['path']}" + (f" ({p['detail']})"
                                                               if p["detail"] else ""))
        verdict = "[green]clean[/]" if r["clean"] else f"[red]{len(r['problems'])} problems[/]"
        out.print(f"state {r['state']}: {r['objects_checked']} objects, {r['files_checked']} "
                  f"files, {human_bytes(r['bytes_hashed'])} hashed — {verdict}")
        if not r["clean"] and not fix:
            out.print("run onix verify --fix to restore from the store")

    report = _run(json, lambda: api.verify(root, fix=fix, wait=not no_wait,
                                           progress=_progress(json)), human)
    if not report["clean"]:
        raise typer.Exit(1)


@app.command()
def status(root: Root = Path("/"), json: Json = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                 help="List drifted keys.")] = False) -> None:
    """What is live: active fstx, boot entry, the Nix plane's seams, states, store size."""
    from onix import api

    _run(json, lambda: api.status(root), lambda r: sys.stdout.write("".join(
        line + "\n" for line in format_status(r, verbose=verbose))), rich_output=False)


@app.command("ownership")
def ownership_cmd(root: Root = Path("/"), json: Json = False) -> None:
    """The ownership contract: which plane owns which surface (as recorded in the root)."""
    from onix import api

    def human(rows: list) -> None:
        from rich.table import Table

        t = Table(box=None)
        for col in ("surface", "owner", "reason"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["surface"], r["owner"], r["reason"])
        console().print(t)

    _run(json, lambda: api.ownership(root), human)


# -- states ------------------------------------------------------------------------


@state_app.command("list")
def state_list(root: Root = Path("/"), json: Json = False) -> None:
    """States, newest first; * marks the active one."""
    from onix import api

    def human(rows: list) -> None:
        from rich.table import Table

        t = Table(box=None)
        for col in ("", "id", "fstx", "created", "stones", "pinned", "summary"):
            t.add_column(col)
        for r in rows:
            t.add_row("*" if r["active"] else "", str(r["id"]), r["fstx"], r["created"],
                      str(r["stones"]), "pinned" if r["pinned"] else "", r["summary"])
        console().print(t)

    _run(json, lambda: api.list_states(root), human)


@state_app.command("show")
def state_show(state_id: Annotated[int, typer.Argument(metavar="ID")], root: Root = Path("/"),
               json: Json = False) -> None:
    """One state: its fstx, stones and size."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        out.print(f"state {r['id']} [bold]{r['fstx']}[/]" + (" (active)" if r["active"] else "")
                  + (" (pinned)" if r["pinned"] else ""))
        out.print(f"created {r['created']}; {r['summary']}")
        out.print(f"{r['files']} files, {human_bytes(r['bytes'])}")
        for s in r["stones"]:
            out.print(f"  {s['name']} {s['version']}-{s['release']}  [dim]{s['summary']}[/]")

    _run(json, lambda: api.show_state(root, state_id), human)


@state_app.command("diff")
def state_diff(a: int, b: int, root: Root = Path("/"), json: Json = False) -> None:
    """Stones and files added, removed and changed from state A to state B."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        for what in ("stones", "files"):
            for change, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
                for item in r[what][change]:
                    out.print(f"{sign} {item}")
        if not any(r[w][c] for w in ("stones", "files") for c in ("added", "removed", "changed")):
            out.print("no differences")

    _run(json, lambda: api.diff_states(root, a, b), human)


@state_app.command("activate")
def state_activate(state_id: Annotated[int, typer.Argument(metavar="ID")],
                   root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Make an archived state live."""
    from onix import api

    _run(json, lambda: api.activate(root, state_id, wait=not no_wait), _print_switch)


def _pin(state_id: int, pinned: bool, root: Path, json: bool, no_wait: bool) -> None:
    from onix import api

    _run(json, lambda: api.set_pinned(root, state_id, pinned, wait=not no_wait),
         lambda r: console().print(f"state {r['id']} {'pinned' if r['pinned'] else 'unpinned'}"))


@state_app.command("pin")
def state_pin(state_id: Annotated[int, typer.Argument(metavar="ID")], root: Root = Path("/"),
              json: Json = False, no_wait: NoWait = False) -> None:
    """Keep a state through every prune."""
    _pin(state_id, True, root, json, no_wait)


@state_app.command("unpin")
def state_unpin(state_id: Annotated[int, typer.Argument(metavar="ID")], root: Root = Path("/"),
                json: Json = False, no_wait: NoWait = False) -> None:
    """Let prune remove a state again."""
    _pin(state_id, False, root, json, no_wait)


@state_app.command("remove")
def state_remove(ids: Annotated[list[int], typer.Argument(metavar="ID...")],
                 root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Remove archived states (never the active one) and store content only they used."""
    from onix import api

    _run(json, lambda: api.remove_states(root, ids, wait=not no_wait),
         _print_summary_and_warnings)


# -- stones --------------------------------------------------------------------------


@stone_app.command("pack")
def stone_pack(
    src: Annotated[Path, typer.Argument(metavar="DIR", help="DESTDIR holding usr/.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Stone file to write.")],
    name: Annotated[str, typer.Option("--name")],
    version: Annotated[str, typer.Option("--version")],
    release: Annotated[int, typer.Option("--release")] = 1,
    arch: Annotated[str, typer.Option("--arch")] = "x86_64",
    summary: Annotated[str, typer.Option("--summary")] = "",
    license: Annotated[str, typer.Option("--license")] = "",
    provides: Annotated[list[str] | None, typer.Option("--provides")] = None,
    depends: Annotated[list[str] | None, typer.Option("--depends")] = None,
    level: Annotated[int, typer.Option("--level", help="zstd level.")] = 6,
    json: Json = False,
) -> None:
    """Pack a DESTDIR into a stone (deterministic: same tree, same bytes)."""
    from onix import api

    def human(r: dict) -> None:
        console().print(f"{r['path']}: {r['meta']['name']} {r['meta']['version']}-"
                        f"{r['meta']['release']}, {r['entries']} entries, "
                        f"{human_bytes(r['installed_size'])} installed")

    _run(json, lambda: api.pack_stone(src, output, name=name, version=version,
                                      release=release, arch=arch, summary=summary,
                                      license=license, provides=provides or [],
                                      depends=depends or [], level=level), human)


@stone_app.command("inspect")
def stone_inspect(stone: Annotated[Path, typer.Argument(metavar="FILE")],
                  files: Annotated[bool, typer.Option("--files", help="List the layout.")] = False,
                  verify_content: Annotated[bool, typer.Option(
                      "--verify/--no-verify", help="Hash every content blob (default).")] = True,
                  json: Json = False) -> None:
    """Check a stone and print its metadata and payloads."""
    from onix import api

    def human(d: dict) -> None:
        out = console()
        m = d["meta"]
        out.print(f"{m['name']} {m['version']}-{m['release']} ({m['arch']}) — {m['summary']}")
        out.print(f"license: {m['license'] or '-'}; provides: {', '.join(m['provides']) or '-'}; "
                  f"depends: {', '.join(m['depends']) or '-'}")
        out.print(f"{d['entries']} entries, {d['files']} files, {d['unique_contents']} unique "
                  f"contents, {human_bytes(d['installed_size'])} installed")
        if d["content_verified"]:
            out.print("content: every blob matches its digest")
        for kind, p in d["payloads"].items():
            out.print(f"  {kind:8} {human_bytes(p['stored']):>10} stored  "
                      f"{human_bytes(p['plain']):>10} plain  {p['records']} records")
        for rec in d.get("layout", []):
            out.print(f"  {rec[1]:7} {rec[2]:04o} /usr/{rec[0]}")

    _run(json, lambda: api.inspect_stone(stone, check=verify_content, files=files), human)


# -- boot plane --------------------------------------------------------------------------

Esp = Annotated[Path | None, typer.Option("--esp", help="The ESP (default: found).",
                                          file_okay=False)]
Xbootldr = Annotated[Path | None, typer.Option("--xbootldr", help="The XBOOTLDR partition.",
                                               file_okay=False)]


def _print_sync(r: dict) -> None:
    out = console()
    for line in r.get("recovered") or []:
        out.print(f"[yellow]recovered:[/] {line}")
    out.print(f"ESP {r['esp']}" + (f", entries on {r['boot']}" if r["boot"] != r["esp"] else ""))
    out.print(f"default entry: [bold]{r['default']}[/]")
    for e in r["entries"]:
        out.print(f"  {e}")
    for sid, why in (r.get("skipped") or {}).items():
        out.print(f"[yellow]no entry for state {sid}:[/] {why}")
    if r.get("fallback"):
        fb = r["fallback"]
        out.print(f"[yellow]state {fb['failed']} failed to boot; state {fb['booted']} is the "
                  "default now[/]")
    changed = len(r["written"]) + len(r["removed"]) + len(r["bootloader"])
    out.print(f"[dim]{len(r['written'])} written, {len(r['removed'])} removed"
              + (f", systemd-boot updated ({', '.join(r['bootloader'])})" if r["bootloader"]
                 else "") + ("" if changed else " (already in sync)") + "[/]")


@boot_app.command("sync")
def boot_sync(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
              json: Json = False, no_wait: NoWait = False) -> None:
    """Write entries, kernels and initrds for the retained states; drop stale ones."""
    from onix import api

    _run(json, lambda: api.boot_sync(root, esp_dir=esp, xbootldr=xbootldr, wait=not no_wait),
         _print_sync)


@boot_app.command("status")
def boot_status(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                json: Json = False) -> None:
    """ESP, bootloader, default entry, and every entry with its state and tries left."""
    from onix import api

    def human(r: dict) -> None:
        out = console()
        if r["esp"] is None:
            out.print("no ESP found (mount it, create ROOT/boot, or pass --esp)")
            return
        out.print(f"ESP:        {r['esp']}")
        out.print(f"XBOOTLDR:   {r['xbootldr'] or '-'}")
        out.print(f"bootloader: {r['bootloader']}")
        out.print(f"default:    [bold]{r['default'] or 'none'}[/]")
        for k, v in (r.get("efi") or {}).items():
            if v:
                out.print(f"{k}: {v}")
        for e in r["entries"]:
            marks = [m for m, on in (("default", e["default"]), ("live", e["live"]),
                                     ("gone", not e["state_exists"]), ("bad", e["bad"])) if on]
            tries = "blessed" if e["blessed"] else f"{e['tries_left']} tries left"
            out.print(f"  {e['file']:34} state {e['state']:<5} {tries:14} "
                      f"{' '.join(marks)}")
            for f in e["missing_files"]:
                out.print(f"    [red]missing {f}[/]")
        out.print(f"kernels and initrds: {len(r['kernels'])}")

    _run(json, lambda: api.boot_status(root, esp_dir=esp, xbootldr=xbootldr), human)


@boot_app.command("mark-good")
def boot_mark_good(root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                   json: Json = False, no_wait: NoWait = False) -> None:
    """Bless the booted entry: boot counting is over for it."""
    from onix import api

    def human(r: dict) -> None:
        console().print(f"{r['entry']} is blessed" if r["changed"]
                        else f"{r['entry']} was already blessed")

    _run(json, lambda: api.boot_mark_good(root, esp_dir=esp, xbootldr=xbootldr,
                                           wait=not no_wait), human)


@boot_app.command("set-default")
def boot_set_default(state_id: Annotated[int, typer.Argument(metavar="ID")],
                     once: Annotated[bool, typer.Option(
                         "--once", help="Only the next boot (EFI LoaderEntryOneShot).")] = False,
                     root: Root = Path("/"), esp: Esp = None, xbootldr: Xbootldr = None,
                     json: Json = False, no_wait: NoWait = False) -> None:
    """Boot state ID by default from now on, or with --once for the next boot only."""
    from onix import api

    def human(r: dict) -> None:
        when = "the next boot" if r["once"] else "every boot from now on"
        console().print(f"state {r['state']} ({r['entry']}) boots {when}")

    _run(json, lambda: api.boot_set_default(root, state_id, once=once, esp_dir=esp,
                                             xbootldr=xbootldr, wait=not no_wait), human)


# -- services ----------------------------------------------------------------------------


@app.command("services")
def services_cmd(root: Root = Path("/"), json: Json = False,
                 sync: Annotated[bool, typer.Option(
                     "--sync", help="First reconcile the scan directory with the live state "
                     "(what a boot service runs: /run starts empty).")] = False,
                 no_wait: NoWait = False) -> None:
    """The live state's s6 services and what s6-svstat says of each."""
    from onix import api

    def rows() -> list:
        return api.services(root, sync=sync, wait=not no_wait,
                            warn=lambda w: sys.stderr.write(f"warning: {w}\n"))

    def human(rows: list) -> None:
        out = console()
        if not rows:
            out.print("no services in the live state")
        for r in rows:
            where = "" if r.get("in_state") else " (not in the live state)"
            state = r.get("error") or r.get("text") or r.get("state")
            out.print(f"{r['name']:20} {state}{where}")

    _run(json, rows, human)


# -- nix plane ---------------------------------------------------------------------------


@nix_app.command("seed")
def nix_seed(root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """nixbld users, /etc/nix defaults, the shell hook, /nix runtime dirs, the GL bridge."""
    from onix import api

    def run() -> dict:
        return api.nix_seed(root, wait=not no_wait)

    def human(r: dict) -> None:
        out = console()
        for line in r["changed"] or ["nothing to do: already seeded"]:
            out.print(line)
        if r.get("opengl", {}).get("bridge"):
            out.print(f"/run/opengl-driver → {r['opengl']['bridge']}")

    _run(json, run, human)


@nix_app.command("check")
def nix_check(user: Annotated[str, typer.Option("--user", help="Build as this user.")] = "nobody",
              json: Json = False) -> None:
    """Self-test: build a trivial derivation through the daemon as a non-root user."""
    from onix import api

    _run(json, lambda: api.nix_check(user=user),
         lambda r: console().print(f"nix daemon built {r['path']} as {user} "
                                   f"in {r['seconds']:.1f} s: ok"))


# -- builder and repositories --------------------------------------------------------------


@app.command()
def build(recipes: Annotated[list[Path], typer.Argument(metavar="RECIPE...",
                                                        help="recipes/*.yaml files.")],
          out: Annotated[Path, typer.Option("-o", "--output", help="Directory for the stones.")
                         ] = Path("stones"),
          cache: Annotated[Path | None, typer.Option(
              "--cache", help="Cache root: DIR/sources (verified downloads) and DIR/work "
              "(default $ONIX_CACHE or ~/.cache/onix).")] = None,
          jobs: Annotated[int | None, typer.Option(
              "--jobs", "-j", help="Parallel jobs for the steps (default: CPU count).")] = None,
          keep: Annotated[bool, typer.Option("--keep", help="Keep the work directory.")] = False,
          json: Json = False) -> None:
    """Build recipes into stones (+ -dbginfo, + a JSON manifest) in a clean environment."""
    from onix import api

    def run() -> list:
        results = []
        for r in recipes:
            note = None if json else (lambda step, r=r: console().print(
                f"[dim]{r.stem}:[/] {step}"))
            results.append(api.build(r, out=out, cache=cache, jobs=jobs, keep=keep,
                                     progress=note).as_dict())
        return results

    def human(rows: list) -> None:
        for r in rows:
            for st in r["stones"]:
                console().print(f"{st['file']}  {human_bytes(st['size'])}")
            console().print(f"manifest: {r['manifest']}")

    _run(json, run, human)


key_app = typer.Typer(help="Signing keys for repository indexes.", no_args_is_help=True)
app.add_typer(key_app, name="key")
repo_app = typer.Typer(help="Repositories stones are installed from by name.",
                       no_args_is_help=True)
app.add_typer(repo_app, name="repo")


@key_app.command("generate")
def key_generate(out: Annotated[Path, typer.Option(
                     "--out", help="Writes OUT.key (private, 0600) and OUT.pub.")],
                 comment: Annotated[str, typer.Option("--comment")] = "onix",
                 json: Json = False) -> None:
    """Make an ed25519 key pair for signing a repository index."""
    from onix import api

    _run(json, lambda: api.generate_key(out=out, comment=comment), lambda r: console().print(
        f"private key: {r['private']}\npublic key:  {r['public']}\n{r['public_key']}"))


@app.command("index")
def index_cmd(directory: Annotated[Path, typer.Argument(metavar="DIR", file_okay=False)],
              key: Annotated[Path, typer.Option("--key", help="Private key (onix key generate).")],
              name: Annotated[str | None, typer.Option("--name", help="Repository name.")] = None,
              json: Json = False) -> None:
    """Write DIR/index.json for the stones in DIR and sign it (index.json.sig)."""
    from onix import api

    _run(json, lambda: api.write_index(directory=directory, key=key, name=name),
         lambda r: console().print(f"{r['index']}: {r['stones']} stones, signed by key "
                                   f"{r['key_id']}"))


def _print_repos(rows: list) -> None:
    if not rows:
        console().print("no repositories (onix repo add NAME URI --key PUBKEY)")
    for r in rows:
        state = f"{r['stones']} stones" if r["status"] == "ok" else f"[yellow]{r['status']}[/]"
        console().print(f"{r['name']}  {r['uri']}  priority {r['priority']}  key {r['key_id']}"
                        f"  {state}")


@repo_app.command("add")
def repo_add(name: str, uri: str,
             key: Annotated[str, typer.Option("--key", help="Public key line or .pub file.")],
             priority: Annotated[int, typer.Option("--priority")] = 0,
             root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Add a repository (a directory or an http(s) URL); its index must verify."""
    from onix import api

    _run(json, lambda: api.repo_add(root, name=name, uri=uri, public_key=key,
                                    priority=priority, wait=not no_wait),
         lambda r: _print_repos([r]))


@repo_app.command("list")
def repo_list(root: Root = Path("/"), json: Json = False) -> None:
    """Configured repositories and whether their cached index verifies."""
    from onix import api

    _run(json, lambda: [r.as_dict() for r in api.repo_list(root)], _print_repos)


@repo_app.command("remove")
def repo_remove(name: str, root: Root = Path("/"), json: Json = False,
                no_wait: NoWait = False) -> None:
    """Forget a repository (installed stones stay)."""
    from onix import api

    _run(json, lambda: api.repo_remove(root, name=name, wait=not no_wait),
         lambda r: console().print(f"removed repository {r['name']}"))


@repo_app.command("update")
def repo_update(names: Annotated[list[str] | None, typer.Argument(metavar="[NAME...]")] = None,
                root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Fetch and verify the indexes again (all repositories, or NAME...)."""
    from onix import api

    def run():
        return [u.as_dict() for u in api.repo_update(root, names=names or None,
                                                     wait=not no_wait)]

    _run(json, run, lambda rows: [console().print(
        f"{u['name']}: {u['stones']} stones" + (" (changed)" if u["changed"] else ""))
        for u in rows])


# -- validation images and VMs (onix/image.py, onix/validate.py) --------------------------

image_app = typer.Typer(help="Bootable disk images composed from stones.", no_args_is_help=True)
app.add_typer(image_app, name="image")


def _project_default(rel: str) -> Path:
    return Path(rel).absolute()  # the working directory's, like `onix build -o stones`


@image_app.command("build")
def image_build(
    out: Annotated[Path, typer.Option("--out", help="Write the disk image here.",
                                      dir_okay=False)],
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Signed repository of stones (default: ./stones).",
        file_okay=False)] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", help="Its public key (default: ./.cache/keys/local.pub).", dir_okay=False)] = None,
    stones: Annotated[list[str] | None, typer.Option(
        "--stone", help="A stone to install (repeat; default: the validation set).")] = None,
    size: Annotated[str, typer.Option("--size", help="Disk size, e.g. 2G.")] = "2G",
    cmdline: Annotated[list[str] | None, typer.Option(
        "--cmdline", help="An extra kernel command-line word (repeat).")] = None,
    tries: Annotated[int | None, typer.Option(
        "--tries", help="boot.conf tries for new entries (default: onix's 3).")] = None,
    fixtures: Annotated[bool, typer.Option(
        "--fixtures", help="Add the validation fixtures (test repository, offline Nix flake).")
    ] = False,
    work: Annotated[Path | None, typer.Option(
        "--work", help="Image cache directory (default: ~/.cache/onix/images).",
        file_okay=False)] = None,
    json: Json = False,
) -> None:
    """Compose a bootable GPT disk (ESP + ext4 root) with onix's own transactions."""
    from onix.validate import image

    boot_conf = "timeout = 0\n" + (f"tries = {tries}\n" if tries is not None else "")

    def run() -> object:
        return image.build_image(
            out=out, repo=repo or _project_default("stones"),
            key=key or _project_default(".cache/keys/local.pub"), stones=stones or None,
            size=size, cmdline=cmdline or None, boot_conf=boot_conf, fixtures=fixtures,
            work=work, progress=None if json else (lambda m: console().print(m)))

    def human(r: dict) -> None:
        c = console()
        c.print(f"{r['disk']}: state {r['state']} fstx {r['fstx']}"
                + (" (from the cache)" if r["cached"] else ""))
        c.print(f"esp: {r['esp']['size'] >> 20} MiB at {r['esp']['start'] >> 20} MiB; "
                f"root: {r['rootfs']['size'] >> 20} MiB at {r['rootfs']['start'] >> 20} MiB")
        c.print(f"key {r['key']}, root {r['root']}")
        c.print("seconds: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()))

    _run(json, run, human, rich_output=False)


@app.command("validate")
def validate_cmd(
    scenarios: Annotated[list[str] | None, typer.Argument(
        metavar="[SCENARIO...]", help="Names or numbers (default: all).")] = None,
    json: Json = False,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep every scenario's disk, NVRAM and serial logs.")] = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds one boot may take.")] = 300.0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="VMs at once.")] = 2,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Signed repository of stones (default: ./stones).",
        file_okay=False)] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", help="Its public key (default: ./.cache/keys/local.pub).", dir_okay=False)] = None,
    work: Annotated[Path | None, typer.Option(
        "--work", help="Where runs go (default: ~/.cache/onix/validate).",
        file_okay=False)] = None,
) -> None:
    """Boot validation images in QEMU and run the scenarios across real reboots.

    Scenarios: nix-profile (1), rollback (2), prune-gc (3), mesa-rollback (4, not built),
    boot-menu (5), failed-boot (6). See docs/validation.md.
    """
    from onix.validate import scenarios as validate

    def say(msg: str) -> None:
        if not json:
            print(msg, flush=True)

    import signal

    def on_term(_sig: int, _frame: object) -> None:  # SIGTERM: stop the VMs like Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        rep = validate.run(scenarios or None, repo=repo, key=key, work=work, timeout=timeout,
                           keep=keep, jobs=jobs, progress=say)
    except OnixError as e:  # stopped before a table: the JSON still has its shape
        error(e.line(), as_json=json, data={**validate.empty_report(), **e.as_dict()})
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        error("onix validate: interrupted; every VM was stopped", as_json=json,
              data={**validate.empty_report(), "error": "interrupted"})
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if json:
        print_json(rep.as_dict())
    else:
        print()
        for line in validate.format_table(rep):
            print(line)
        details = validate.format_details(rep)
        if details:
            print()
            for line in details:
                print(line)
        if keep or not rep.ok:
            print(f"work: {rep.work}")
    if not rep.ok:
        raise typer.Exit(1)
