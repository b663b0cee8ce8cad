"""Registers the fixtures of tests/support for every test, so no module imports them.

Each is started only by the tests that name it: the registries (`registry`,
`basic_registry`, `token_registry`), MUNGE daemons (`munge_socket`, `other_munge_socket`,
`munge_daemon`), Redis (`redis_server`, `redis_url`), sshd (`sshd_target`) and the
backend fixtures that run one contract suite over each store and queue.
"""

# In import order: backends imports redis_server, which must be loaded (and its asserts
# rewritten) as a plugin first.
pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.backends",
    "tests.support.munge",
    "tests.support.registry",
    "tests.support.sshd",
]
