#!/usr/bin/env bash
# Fresh machine -> results: set up .venv, then run the main job (collect -> train -> eval -> rerun recording).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/genctl demo "$@"
