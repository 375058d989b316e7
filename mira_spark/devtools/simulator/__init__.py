"""Simulated MIRA scorer endpoint: an OpenAI-compatible stand-in for the 35B vLLM-served scorer.

Takes chat requests built by :mod:`mira_spark.prompting.prompts`; gives answers in the scorer's exact output
format, scored deterministically from document content (:mod:`.judge`), with vLLM-like latency from a
continuous-batching capacity model (:mod:`.capacity`) and seeded fault injection (:mod:`.faults`).
It is a *simulator*: nothing here runs a language model.
"""
