#!/usr/bin/env bash
# Build the Python environment a YARN job runs in, and pack it with venv-pack.
#
#   jobs/yarn/pack_env.sh [OUT.tar.gz]        (default: build/mira_env.tar.gz)
#
# The environment holds mira-spark (this checkout, as a wheel, no dependencies) and its runtime
# dependencies from pyproject.toml EXCEPT pyspark: on a cluster, spark-submit puts the cluster's own
# pyspark (SPARK_HOME/python/lib/pyspark.zip and py4j) on the driver's and executors' PYTHONPATH, and a
# second pyspark in the env (485 MB with its jars) would shadow it. The packed env needs the same Python
# at the same path on every node (venv-pack links the interpreter; it does not copy it).
#
# Environment: PYTHON (the interpreter to build from; default python3), PIP_ARGS (extra pip options),
# MIRA_ENV_DIR (where the venv is built; default build/yarn-env), VENV_PACK (the venv-pack command;
# default: the one next to PYTHON, from the `yarn` extra, else `venv-pack` on PATH).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/build/mira_env.tar.gz}"
PYTHON="${PYTHON:-python3}"
ENV_DIR="${MIRA_ENV_DIR:-$REPO/build/yarn-env}"
read -r -a PIP_EXTRA <<< "${PIP_ARGS:-}"

if [[ -z "${VENV_PACK:-}" ]]; then
  VENV_PACK="$(dirname "$(command -v "$PYTHON")")/venv-pack"
  [[ -x "$VENV_PACK" ]] || VENV_PACK="$(command -v venv-pack || true)"
fi
if [[ -z "$VENV_PACK" || ! -x "$VENV_PACK" ]]; then
  echo "pack_env.sh: venv-pack not found; pip install 'mira-spark[yarn]' (or venv-pack) first" >&2
  exit 2
fi

# Runtime dependencies from pyproject.toml, minus pyspark (see above).
mapfile -t DEPS < <("$PYTHON" - "$REPO/pyproject.toml" <<'PY'
import re, sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    if re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0].lower() != "pyspark":
        print(dep)
PY
)

start=$(date +%s)
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "${PIP_EXTRA[@]}" "${DEPS[@]}"
# The project itself, without its pyspark pin (the cluster provides pyspark).
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${PIP_EXTRA[@]}" "$REPO"
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
"$VENV_PACK" -q -p "$ENV_DIR" -o "$OUT"
echo "pack_env.sh: $OUT ($(du -h "$OUT" | cut -f1), env $(du -sh "$ENV_DIR" | cut -f1)) in $(( $(date +%s) - start ))s" >&2
