"""Making stones and repositories, and the repositories a root installs from by name:
`onix build`, `onix key generate`, `onix index`, `onix repo ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json, NoWait, Root
from onix.cli.output import console, human_bytes, run

key_group = typer.Typer(help="Signing keys for repository indexes.", no_args_is_help=True)
repo_group = typer.Typer(help="Repositories stones are installed from by name.",
                         no_args_is_help=True)
commands = typer.Typer()


@commands.command()
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

    def build_all() -> list:
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

    run(build_all, human, as_json=json)


@key_group.command("generate")
def key_generate(out: Annotated[Path, typer.Option(
                     "--out", help="Writes OUT.key (private, 0600) and OUT.pub.")],
                 comment: Annotated[str, typer.Option("--comment")] = "onix",
                 json: Json = False) -> None:
    """Make an ed25519 key pair for signing a repository index."""
    run(lambda: api.generate_key(out=out, comment=comment), lambda r: console().print(
        f"private key: {r['private']}\npublic key:  {r['public']}\n{r['public_key']}"),
        as_json=json)


@commands.command("index")
def index_cmd(directory: Annotated[Path, typer.Argument(metavar="DIR", file_okay=False)],
              key: Annotated[Path, typer.Option("--key", help="Private key (onix key generate).")],
              name: Annotated[str | None, typer.Option("--name", help="Repository name.")] = None,
              json: Json = False) -> None:
    """Write DIR/index.json for the stones in DIR and sign it (index.json.sig)."""
    run(lambda: api.write_index(directory=directory, key=key, name=name),
        lambda r: console().print(f"{r['index']}: {r['stones']} stones, signed by key "
                                  f"{r['key_id']}"), as_json=json)


def _print_repos(rows: list) -> None:
    if not rows:
        console().print("no repositories (onix repo add NAME URI --key PUBKEY)")
    for r in rows:
        state = f"{r['stones']} stones" if r["status"] == "ok" else f"[yellow]{r['status']}[/]"
        console().print(f"{r['name']}  {r['uri']}  priority {r['priority']}  key {r['key_id']}"
                        f"  {state}")


@repo_group.command("add")
def repo_add(name: str, uri: str,
             key: Annotated[str, typer.Option("--key", help="Public key line or .pub file.")],
             priority: Annotated[int, typer.Option("--priority")] = 0,
             root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Add a repository (a directory or an http(s) URL); its index must verify."""
    run(lambda: api.repo_add(root, name=name, uri=uri, public_key=key, priority=priority,
                             wait=not no_wait), lambda r: _print_repos([r]), as_json=json)


@repo_group.command("list")
def repo_list(root: Root = Path("/"), json: Json = False) -> None:
    """Configured repositories and whether their cached index verifies."""
    run(lambda: [r.as_dict() for r in api.repo_list(root)], _print_repos, as_json=json)


@repo_group.command("remove")
def repo_remove(name: str, root: Root = Path("/"), json: Json = False,
                no_wait: NoWait = False) -> None:
    """Forget a repository (installed stones stay)."""
    run(lambda: api.repo_remove(root, name=name, wait=not no_wait),
        lambda r: console().print(f"removed repository {r['name']}"), as_json=json)


@repo_group.command("update")
def repo_update(names: Annotated[list[str] | None, typer.Argument(metavar="[NAME...]")] = None,
                root: Root = Path("/"), json: Json = False, no_wait: NoWait = False) -> None:
    """Fetch and verify the indexes again (all repositories, or NAME...)."""
    run(lambda: [u.as_dict() for u in api.repo_update(root, names=names or None,
                                                      wait=not no_wait)],
        lambda rows: [console().print(f"{u['name']}: {u['stones']} stones"
                                      + (" (changed)" if u["changed"] else "")) for u in rows],
        as_json=json)
