"""Local, throwaway infrastructure shared by the demo, the tests and the benchmark.

Real processes on loopback only: a redis-server, Celery workers and beat, a moto S3
server, and small HTTP receivers. Nothing here is imported by the product itself.
"""
