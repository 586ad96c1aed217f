"""`clipada serve`: an inference server on Ray Serve speaking the Open Inference Protocol (KServe v2) over HTTP.

`protocol` parses and checks requests and builds responses, `model` holds the checkpoint or export of a replica and
decides as `clipada predict` does, `deployment` is the Ray Serve deployment (routes, size limit, dynamic batching),
`command` the command line. Importing this package imports nothing of Ray; `deployment` and `command` need
`clipada[serve]`.
"""

__all__: list[str] = []
