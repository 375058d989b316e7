"""The scoring stage: routed documents -> raw outputs, one asyncio loop per Spark task."""
