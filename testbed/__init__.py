"""Real parts to run the Image Gateway against, for the tests, the benchmark and the demo.

Not part of any distribution: it lives beside `tests/` and `bench/`, which import it from
the checkout. `registry` starts Debian's docker-registry on a loopback port (anonymous,
Basic or token auth), `layers` crafts layer blobs, `images` pushes images and indexes to
a registry, `services` starts `imagegw serve`/`gateway`/`worker` as their own processes.
The pytest fixtures over them stay in tests/support.
"""
