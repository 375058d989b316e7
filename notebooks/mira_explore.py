# Databricks notebook source
# MAGIC %md
# MAGIC # Explore a MIRA run: scores, masks, thresholds
# MAGIC SQL over the views a run registers (`mira_<table>`, `scores_long`; see `mira_spark/store/views.py` and the
# MAGIC example queries in `sql/`) and a few plots. Point **config** at the run config of the run to explore;
# MAGIC nothing is scored here.

# COMMAND ----------

# ruff: noqa: F821, E402, B018  (Databricks globals; imports after the widgets; a cell shows its last value)
dbutils.widgets.text("config", "conf/databricks.yaml", "Config file")
dbutils.widgets.text("source", "", "Source for the near-threshold list (empty: all)")

# COMMAND ----------

from mira_spark.explore import (
    open_run_views,
    plot_reliability_mask,
    plot_score_distributions,
    plot_thresholds,
)

views = open_run_views(spark, dbutils.widgets.get("config"))
views

# COMMAND ----------

# MAGIC %md
# MAGIC ## Score distributions per source and dimension (unmasked cells)

# COMMAND ----------

per_dimension = spark.sql("""
    SELECT source, slot, dimension, count(score) AS n, round(avg(score), 2) AS mean_score,
           percentile(score, 0.5) AS median_score, min(score) AS min_score, max(score) AS max_score
    FROM scores_long WHERE NOT masked
    GROUP BY source, slot, dimension ORDER BY source, int(substring(slot, 2))
""")
display(per_dimension)
display(plot_score_distributions(spark.sql("SELECT source, score, masked FROM scores_long").toPandas()))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Reliability mask: which (source, dimension) cells are not trusted, and why

# COMMAND ----------

reliability = spark.sql("""
    SELECT source, scorer, slot, dimension, n, round(mae, 3) AS mae, round(spearman, 3) AS spearman,
           masked, reason, basis
    FROM mira_reliability ORDER BY source, int(substring(slot, 2))
""")
display(reliability.filter("masked"))
display(plot_reliability_mask(reliability.toPandas()))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Thresholds and the documents closest to them

# COMMAND ----------

display(spark.sql("SELECT * FROM mira_thresholds ORDER BY variant, unit"))
near = spark.sql("""
    SELECT d.variant, d.source, d.doc_id, d.decision, round(d.composite, 3) AS composite,
           round(t.threshold, 3) AS threshold, round(d.composite - t.threshold, 3) AS margin
    FROM mira_decisions d JOIN mira_thresholds t ON d.variant = t.variant AND d.unit = t.unit
    WHERE t.cut_on = 'composite' AND d.composite IS NOT NULL AND t.threshold IS NOT NULL
      AND (:source = '' OR d.source = :source)
    ORDER BY abs(d.composite - t.threshold), d.variant, d.doc_id LIMIT 20
""", args={"source": dbutils.widgets.get("source")})
display(near)
# One variant's units (the source variant: one panel per source); any variant works.
display(plot_thresholds(
    spark.sql("SELECT unit, decision, composite FROM mira_decisions WHERE variant = 'source'").toPandas(),
    spark.sql("SELECT unit, threshold FROM mira_thresholds WHERE variant = 'source'").toPandas()))
