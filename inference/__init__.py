"""Everything that serves images with a trained checkpoint: loading, backends, scoring, predict, export and the app.

Dependencies run one way: `training` -> `inference` -> `modeling_clipada` / `processing`. This file imports nothing,
so `inference.deploy.runners` and `clipada predict --backend onnxruntime` load where torch is not installed.
"""

__all__: list[str] = []
