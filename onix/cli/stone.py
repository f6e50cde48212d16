"""`onix stone ...`: make a stone from a DESTDIR, and read one back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onix import api
from onix.cli.options import Json
from onix.cli.output import console, human_bytes, run

group = typer.Typer(help="Make and read stone files.", no_args_is_help=True)


@group.command("pack")
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

    def human(r: dict) -> None:
        console().print(f"{r['path']}: {r['meta']['name']} {r['meta']['version']}-"
                        f"{r['meta']['release']}, {r['entries']} entries, "
                        f"{human_bytes(r['installed_size'])} installed")

    run(lambda: api.pack_stone(src, output, name=name, version=version, release=release,
                               arch=arch, summary=summary, license=license,
                               provides=provides or [], depends=depends or [], level=level),
        human, as_json=json)


@group.command("inspect")
def stone_inspect(stone: Annotated[Path, typer.Argument(metavar="FILE")],
                  files: Annotated[bool, typer.Option("--files", help="List the layout.")] = False,
                  verify_content: Annotated[bool, typer.Option(
                      "--verify/--no-verify", help="Hash every content blob (default).")] = True,
                  json: Json = False) -> None:
    """Check a stone and print its metadata and payloads."""

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

    run(lambda: api.inspect_stone(stone, check=verify_content, files=files), human,
        as_json=json)
