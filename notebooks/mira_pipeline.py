# Databricks notebook source
# MAGIC %md
# MAGIC # MIRA data selection
# MAGIC Scores the documents table with the MIRA student scorers, masks unreliable dimensions and keeps the
# MAGIC top documents per source. The notebook only reads widgets and calls library functions; all logic
# MAGIC lives in the `mira_spark` package (installed on the cluster or via the bundle's wheel,
# MAGIC `jobs/databricks.yml`).
# MAGIC
# MAGIC * **config**: the run config (Unity Catalog names, endpoints, secret scope), e.g. the bundle's synced
# MAGIC   `conf/databricks.yaml`.
# MAGIC * **stage**: `run` (the whole job) or one stage of `mira_spark.pipeline.STAGES` (route, score, parse,
# MAGIC   reliability, samples, select).
# MAGIC * **run_id**: optional; recorded in `raw_outputs` and `run_stats`.

# COMMAND ----------

# ruff: noqa: F821, E402, B018  (Databricks globals; imports after the widgets; a cell shows its last value)
from mira_spark.explore import stage_choices

dbutils.widgets.text("config", "conf/databricks.yaml", "Config file")
dbutils.widgets.dropdown("stage", "run", stage_choices(), "Stage")
dbutils.widgets.text("run_id", "", "Run id (optional)")

# COMMAND ----------

from mira_spark.explore import open_run_views, run_from_widgets

result = run_from_widgets(spark, dbutils.widgets.get("config"), dbutils.widgets.get("stage"),
                          dbutils.widgets.get("run_id"))
result

# COMMAND ----------

# MAGIC %md
# MAGIC The run's views: `mira_<table>` for every table and `scores_long` (persistent in `tables.schema` on
# MAGIC Unity Catalog, session views otherwise).

# COMMAND ----------

views = open_run_views(spark, dbutils.widgets.get("config"))
display(spark.sql("SELECT reason, count(*) AS n FROM mira_decisions GROUP BY reason ORDER BY n DESC"))
