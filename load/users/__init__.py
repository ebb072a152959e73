"""Locust user classes (importing this package imports locust and its gevent patching)."""
