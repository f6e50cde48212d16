# ONIX tasks. `scripts/bootstrap` installs just itself (rust-just) into .venv.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin"

# list the recipes
default:
    @just --list

# create .venv and install Debian packages the tests and benchmarks use
bootstrap:
    ./scripts/bootstrap

# the demo on a scratch root
demo:
    ./scripts/demo

# the whole test suite (what CI runs)
test *ARGS:
    ./scripts/test {{ARGS}}

# build recipes/*.yaml (or the RECIPES given) into stones/, a signed local repository
stones *RECIPES:
    ./scripts/stones {{RECIPES}}

# a bootable validation disk from stones/ (built first if missing; `just stones` rebuilds)
image OUT=".cache/onix-validation.img":
    [ -f stones/index.json ] || ./scripts/stones
    {{venv}}/onix image build --fixtures --tries 1 --out {{OUT}}

# boot IMAGE (built first if missing) in QEMU, its console here, Ctrl-] stops it; ARGS: --ssh-port P --snapshot …
run IMAGE=".cache/onix-validation.img" *ARGS:
    [ -f {{IMAGE}} ] || {{just_executable()}} image {{IMAGE}}
    {{venv}}/onix vm run {{IMAGE}} {{ARGS}}

# boot the validation scenarios in QEMU (all, or the SCENARIOS named); see docs/validation.md
validate *SCENARIOS:
    [ -f stones/index.json ] || ./scripts/stones
    {{venv}}/onix validate {{SCENARIOS}}

# lint
lint:
    {{venv}}/ruff check onix tests

# benchmarks against cp -al, ostree and b3sum (prints ratios; asserts nothing)
bench *ARGS:
    ./scripts/bootstrap
    {{venv}}/python tests/bench/bench_engine.py {{ARGS}}
