"""Load tests of the mesh with locust (`make load` = `python -m load`): a gRPC user and a gateway
HTTP user with the same request mix, plus long-lived Watch / SSE stream users. See load/README.md.

Only `load/locustfile.py` and `load/users/` import locust (which monkey-patches with gevent); the
rest of the package (config, world set-up, mesh spawning) is plain Python that `bench/` reuses.
"""
