"""`onix image build`, `onix validate` and `onix vm run`: bootable images, the scenarios
run in VMs, and an image booted for a person at the terminal.

These sit above onix.api (the harness composes images with api.install like a user
would), so they call onix.validate. It is imported inside the commands: every other
onix command loads this module too, and has no use for QEMU or the image builder.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from onix.cli.options import Json
from onix.cli.output import console, fail, print_json, print_lines, run

image_group = typer.Typer(help="Bootable disk images composed from stones.",
                          no_args_is_help=True)
vm_group = typer.Typer(help="ONIX disk images booted in QEMU, the console on this terminal.",
                       no_args_is_help=True)
commands = typer.Typer()

Repo = Annotated[Path | None, typer.Option(
    "--repo", help="Signed repository of stones (default: ./stones).",
    file_okay=False)]
Key = Annotated[Path | None, typer.Option(
    "--key", help="Its public key (default: ./.cache/keys/local.pub).", dir_okay=False)]


@image_group.command("build")
def image_build(
    out: Annotated[Path, typer.Option("--out", help="Write the disk image here.",
                                      dir_okay=False)],
    repo: Repo = None,
    key: Key = None,
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

    def human(r: dict) -> None:
        c = console()
        c.print(f"{r['disk']}: state {r['state']} fstx {r['fstx']}"
                + (" (from the cache)" if r["cached"] else ""))
        c.print(f"esp: {r['esp']['size'] >> 20} MiB at {r['esp']['start'] >> 20} MiB; "
                f"root: {r['rootfs']['size'] >> 20} MiB at {r['rootfs']['start'] >> 20} MiB")
        c.print(f"key {r['key']}, root {r['root']}")
        c.print("seconds: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()))

    run(lambda: image.build_image(
        out=out, repo=(repo or Path("stones")).absolute(),  # the working directory's
        key=(key or Path(".cache/keys/local.pub")).absolute(),
        stones=stones or None, size=size, cmdline=cmdline or None, boot_conf=boot_conf,
        fixtures=fixtures, work=work, progress=None if json else (lambda m: console().print(m))),
        human, as_json=json, markup=False)


@commands.command("validate")
def validate_cmd(
    scenarios: Annotated[list[str] | None, typer.Argument(
        metavar="[SCENARIO...]", help="Names or numbers (default: all).")] = None,
    json: Json = False,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep every scenario's disk, NVRAM and serial logs.")] = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds one boot may take.")] = 300.0,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="VMs at once.")] = 2,
    repo: Repo = None,
    key: Key = None,
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

    def on_term(_sig: int, _frame: object) -> None:  # SIGTERM: stop the VMs like Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        rep = validate.run(scenarios or None, repo=repo, key=key, work=work, timeout=timeout,
                           keep=keep, jobs=jobs, progress=say)
    except (Exception, KeyboardInterrupt) as exc:  # before a table: the JSON keeps its shape
        raise typer.Exit(fail(exc, as_json=json, report=validate.empty_report(),
                              interrupted="onix validate: interrupted; every VM was stopped")
                         ) from None
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if json:
        print_json(rep.as_dict())
    else:
        details = validate.format_details(rep)
        print_lines(["", *validate.format_table(rep), *(["", *details] if details else []),
                     *([f"work: {rep.work}"] if keep or not rep.ok else [])])
    if not rep.ok:
        raise typer.Exit(1)


@vm_group.command("run")
def vm_run(
    image: Annotated[Path, typer.Argument(
        metavar="IMAGE", help="The disk image (onix image build --out, just image).")],
    ssh_port: Annotated[int | None, typer.Option(
        "--ssh-port", help="Forward 127.0.0.1:PORT on this host to the guest's SSH (22).",
        min=1, max=65535)] = None,
    memory: Annotated[str, typer.Option("--memory", help="RAM: 1G, 512M, or MiB.")] = "1G",
    cpus: Annotated[int, typer.Option("--cpus", help="Virtual CPUs.", min=1)] = 2,
    snapshot: Annotated[bool, typer.Option(
        "--snapshot", help="Write nothing to the image (nor its NVRAM): changes are dropped.")
    ] = False,
    json: Json = False,
) -> None:
    """Boot IMAGE in QEMU with its serial console on this terminal.

    Every key goes to the guest. Ctrl-] asks the guest to power off (a second Ctrl-]
    kills QEMU at once); `poweroff` in the guest ends it too. See docs/validation.md.
    """
    from onix.validate import vm

    def say(msg: str) -> None:
        sys.stderr.write(f"onix vm: {msg}\n")
        sys.stderr.flush()

    ends = {"poweroff": "the guest powered off", "escape": "Ctrl-]",
            "closed": "nobody reads the console any more"}

    def human(r: dict) -> None:
        how = ends.get(r["ended"], f"stopped by {r['ended']}")
        if r["ended"] == "escape":
            how += ": QEMU killed (the guest did not power off)" if r["killed"] else \
                ": the guest powered off"
        elif r["killed"]:
            how += ": QEMU killed"
        say(f"{how} after {r['seconds']:.0f} s")

    r = run(lambda: vm.run(image, ssh_port=ssh_port, memory=memory, cpus=cpus,
                           snapshot=snapshot, progress=say),
            human, as_json=json, markup=False)
    if r["ended"].startswith("SIG"):  # stopped by a signal: the shell's 128 + N
        raise typer.Exit(128 + int(getattr(signal, r["ended"])))
