#!/usr/bin/env bash
# Run mira-spark with spark-submit on YARN (or any master) from a packed virtualenv.
#
#   jobs/yarn/submit.sh [options] [-- more spark-submit options]
#
# Options (each also settable by the environment variable in brackets):
#   --master URL          [MIRA_MASTER]       default yarn
#   --deploy-mode MODE    [MIRA_DEPLOY_MODE]  default cluster (client for --master local[...])
#   --conf-file PATH      [MIRA_CONF_FILE]    run config, default conf/yarn.yaml
#   --stage STAGE         [MIRA_STAGE]        run (default) | score | parse | reliability | select
#   --run-id ID           [MIRA_RUN_ID]
#   --env-archive PATH    [MIRA_ENV_ARCHIVE]  packed env, default build/mira_env.tar.gz; built with
#                                             jobs/yarn/pack_env.sh (venv-pack) when missing
#   --pack                                    rebuild the packed env first
#   --no-delta            [MIRA_NO_DELTA=1]   parquet tables, no Delta packages or confs (local smoke test)
#   --delta-package GAV   [MIRA_DELTA_PACKAGE] default io.delta:delta-spark_4.2_2.13:4.4.1 (pyspark 4.2)
#   --delta-jars LIST     [MIRA_DELTA_JARS]   comma-separated local Delta jars instead of --packages
#   --spark-submit PATH   [SPARK_SUBMIT]      default $SPARK_HOME/bin/spark-submit, else spark-submit
#   --dry-run                                 print the spark-submit command and exit
# Also: SPARK_SUBMIT_ARGS (more spark-submit options, split on spaces), MIRA_API_KEY (the scorer key:
# in cluster mode it reaches the application master through a 0600 properties file, never argv).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MASTER="${MIRA_MASTER:-yarn}"
DEPLOY_MODE="${MIRA_DEPLOY_MODE:-}"
CONF_FILE="${MIRA_CONF_FILE:-$REPO/conf/yarn.yaml}"
STAGE="${MIRA_STAGE:-run}"
RUN_ID="${MIRA_RUN_ID:-}"
ENV_ARCHIVE="${MIRA_ENV_ARCHIVE:-$REPO/build/mira_env.tar.gz}"
NO_DELTA="${MIRA_NO_DELTA:-0}"
DELTA_PACKAGE="${MIRA_DELTA_PACKAGE:-io.delta:delta-spark_4.2_2.13:4.4.1}"
DELTA_JARS="${MIRA_DELTA_JARS:-}"
SPARK_SUBMIT="${SPARK_SUBMIT:-}"
PACK=0
DRY_RUN=0
EXTRA=()
read -r -a ENV_EXTRA <<< "${SPARK_SUBMIT_ARGS:-}"

die() { echo "submit.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) MASTER="$2"; shift 2 ;;
    --deploy-mode) DEPLOY_MODE="$2"; shift 2 ;;
    --conf-file) CONF_FILE="$2"; shift 2 ;;
    --stage) STAGE="$2"; shift 2 ;;
    --run-id) RUN_ID="$2"; shift 2 ;;
    --env-archive) ENV_ARCHIVE="$2"; shift 2 ;;
    --pack) PACK=1; shift ;;
    --no-delta) NO_DELTA=1; shift ;;
    --delta-package) DELTA_PACKAGE="$2"; shift 2 ;;
    --delta-jars) DELTA_JARS="$2"; shift 2 ;;
    --spark-submit) SPARK_SUBMIT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$STAGE" in run|score|parse|reliability|select) ;; *) die "--stage must be run, score, parse, reliability or select" ;; esac
[[ -f "$CONF_FILE" ]] || die "config file not found: $CONF_FILE"
CONF_FILE="$(cd "$(dirname "$CONF_FILE")" && pwd)/$(basename "$CONF_FILE")"
if [[ -z "$DEPLOY_MODE" ]]; then
  if [[ "$MASTER" == local* ]]; then DEPLOY_MODE=client; else DEPLOY_MODE=cluster; fi
fi
[[ "$DEPLOY_MODE" == client || "$DEPLOY_MODE" == cluster ]] || die "--deploy-mode must be client or cluster"
if [[ -z "$SPARK_SUBMIT" ]]; then
  if [[ -n "${SPARK_HOME:-}" && -x "$SPARK_HOME/bin/spark-submit" ]]; then SPARK_SUBMIT="$SPARK_HOME/bin/spark-submit"
  else SPARK_SUBMIT=spark-submit; fi
fi

if [[ "$PACK" == 1 || ! -f "$ENV_ARCHIVE" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# would build $ENV_ARCHIVE with jobs/yarn/pack_env.sh" >&2
  else
    "$REPO/jobs/yarn/pack_env.sh" "$ENV_ARCHIVE"
  fi
fi

ENV_PY=./environment/bin/python   # where YARN unpacks --archives ...#environment in every container
ARGS=(--master "$MASTER" --deploy-mode "$DEPLOY_MODE" --name "mira-spark $STAGE")
ARCHIVES="$ENV_ARCHIVE#environment"
ARGS+=(--conf "spark.pyspark.python=$ENV_PY"
       --conf "spark.executorEnv.PYSPARK_PYTHON=$ENV_PY"
       --conf "spark.yarn.appMasterEnv.PYSPARK_PYTHON=$ENV_PY"
       --conf "spark.yarn.appMasterEnv.RUST_LOG=error"
       --conf "spark.redaction.regex=(?i)secret|password|token|api[._]?key|access[.]key"
       # the composite's generated code exceeds the JVM's 8,000-byte JIT limit: fall back for those stages
       # (bench select, 1M rows on local classic Spark: 2.5x faster; a later --conf of yours wins)
       --conf "spark.sql.codegen.hugeMethodLimit=8000")

JOB_CONF="$CONF_FILE"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mira-submit.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if [[ "$DEPLOY_MODE" == cluster ]]; then
  # The driver runs in a YARN container: ship the config's directory (as conf/) and anchors/ beside it,
  # so relative paths in the YAML files (scorers.yaml, ../anchors/...) resolve there as they do here.
  mkdir -p "$WORK/assets"
  cp -r "$(dirname "$CONF_FILE")" "$WORK/assets/conf"
  cp -r "${MIRA_ANCHORS_DIR:-$REPO/anchors}" "$WORK/assets/anchors"
  tar -czf "$WORK/mira_assets.tar.gz" -C "$WORK/assets" .
  ARCHIVES+=",$WORK/mira_assets.tar.gz#mira"
  JOB_CONF="mira/conf/$(basename "$CONF_FILE")"
  ARGS+=(--conf "spark.yarn.appMasterEnv.PYSPARK_DRIVER_PYTHON=$ENV_PY")
  if [[ -n "${MIRA_API_KEY:-}" ]]; then  # never on the command line (ps, shell history)
    # --properties-file replaces spark-defaults.conf, so the cluster's defaults are copied in first.
    DEFAULTS="${SPARK_CONF_DIR:-${SPARK_HOME:-/nonexistent}/conf}/spark-defaults.conf"
    (umask 077
     { [[ -f "$DEFAULTS" ]] && cat "$DEFAULTS" && echo; \
       printf 'spark.yarn.appMasterEnv.MIRA_API_KEY %s\n' "$MIRA_API_KEY"; } > "$WORK/secret.properties")
    ARGS+=(--properties-file "$WORK/secret.properties")
  fi
else
  # Client mode: the driver runs here, from the same packed env (unpacked once next to the archive).
  UNPACKED="${ENV_ARCHIVE%.tar.gz}.unpacked"
  if [[ "$DRY_RUN" == 0 && ( ! -x "$UNPACKED/bin/python" || "$ENV_ARCHIVE" -nt "$UNPACKED/bin/python" ) ]]; then
    rm -rf "$UNPACKED" && mkdir -p "$UNPACKED" && tar -xzf "$ENV_ARCHIVE" -C "$UNPACKED"
  fi
  ARGS+=(--conf "spark.pyspark.driver.python=$UNPACKED/bin/python")
  if [[ "$MASTER" == local* ]]; then
    # local[...]: the Python workers run in the driver's working directory, not where Spark unpacks
    # --archives, so ./environment does not exist for them; they use the same unpacked env.
    ARGS+=(--conf "spark.pyspark.python=$UNPACKED/bin/python")
  fi
fi
ARGS+=(--archives "$ARCHIVES")

JOB_ARGS=("$STAGE" --config "$JOB_CONF")
[[ -n "$RUN_ID" ]] && JOB_ARGS+=(--run-id "$RUN_ID")
if [[ "$NO_DELTA" == 1 ]]; then
  [[ "$STAGE" == run ]] || die "--no-delta runs the whole job only (--stage run)"
  JOB_ARGS+=(--table-format parquet)
else
  if [[ -n "$DELTA_JARS" ]]; then ARGS+=(--jars "$DELTA_JARS"); else ARGS+=(--packages "$DELTA_PACKAGE"); fi
  ARGS+=(--conf "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"
         --conf "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog")
fi

CMD=("$SPARK_SUBMIT" "${ARGS[@]}" "${ENV_EXTRA[@]}" "${EXTRA[@]}" "$REPO/jobs/mira_job.py" "${JOB_ARGS[@]}")
if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
"${CMD[@]}"
