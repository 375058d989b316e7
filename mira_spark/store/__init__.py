"""Tables, schemas, SQL views and Spark sessions: the only place that reads or writes tables."""
