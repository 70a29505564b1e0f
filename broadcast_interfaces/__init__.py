"""The ways in for people and machines: the settings service, the `broadcast` CLI, the
management HTTP API, the Prometheus metrics, health probes, and the log format.

Imports the engine, the broker, `settings` and `destinations`; never `tasks`.
"""
