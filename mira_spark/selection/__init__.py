"""Selection: reliability mask, composite, thresholds and decisions (pure maths + thin Spark stages)."""
