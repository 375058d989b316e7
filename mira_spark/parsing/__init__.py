"""Parsing: completion text -> score cards (pure) and the Arrow/Spark stage that writes scores."""
