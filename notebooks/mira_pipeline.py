# Databricks notebook source
# MAGIC %md
# MAGIC # MIRA data selection
# MAGIC Scores the documents table with the MIRA student scorers, masks unreliable dimensions and keeps the
# MAGIC top documents per source. The notebook only reads widgets and calls library functions; all logic
# MAGIC lives in the `mira_spark` package (installed on the cluster or via the bundle's wheel).

# COMMAND ----------

dbutils.widgets.text("config", "conf/databricks.yaml", "Config file")  # noqa: F821 - Databricks global
dbutils.widgets.text("run_id", "", "Run id (optional)")  # noqa: F821

# COMMAND ----------

from mira_spark.config import load_settings  # noqa: E402
from mira_spark.pipeline import run_pipeline  # noqa: E402

settings = load_settings(dbutils.widgets.get("config"), {"engine": "active"})  # noqa: F821
summary = run_pipeline(spark, settings, dbutils.widgets.get("run_id") or None)  # noqa: F821
summary.as_dict()

# COMMAND ----------

# MAGIC %sql
# MAGIC -- Views created by the run (persistent when tables.schema is set).
# MAGIC SELECT source, slot, dimension, round(avg(score), 2) AS mean_score, max(masked) AS masked
# MAGIC FROM scores_long GROUP BY source, slot, dimension ORDER BY source, slot
