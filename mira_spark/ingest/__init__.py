"""Documents in: check the input table, route every row once."""
