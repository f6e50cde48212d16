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

# lint
lint:
    {{venv}}/ruff check onix tests

# benchmarks against cp -al, ostree and b3sum (prints ratios; asserts nothing)
bench *ARGS:
    ./scripts/bootstrap
    {{venv}}/python tests/bench/bench_engine.py {{ARGS}}
