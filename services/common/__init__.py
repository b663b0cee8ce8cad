"""Image Gateway: registry images to squashfs images for HPC clusters.

This package holds what the gateway and the worker share: the typed error tree
(`imagegw.errors`), the configuration loader (`imagegw.config`), image references
(`imagegw.reference`), the domain model (`imagegw.model`) and the generated
protobuf code (`imagegw.v1`). The services live in `imagegw.gateway` and
`imagegw.worker`; the Python SDK and `shifterimg` in `imagegw.client`.
"""

__version__ = "0.1.0"
