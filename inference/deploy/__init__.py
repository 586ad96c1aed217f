"""Deployment of CLIP-ADA without PyTorch: the exportable graph (`graph`, needs torch) and its runners (`runners`,
numpy, Pillow, transformers and ONNX Runtime or OpenVINO only). Import the submodule you need; this file imports
nothing, so `inference.deploy.runners` loads where torch is not installed.

Example:
    ```python
    >>> from inference.deploy.runners import ExportedCLIPADA
    >>> model = ExportedCLIPADA("outputs/run-onnx")
    >>> outputs = model.predict(["part.png"])     # anomaly_map, pred_score (+ pred_label, pred_mask)
    ```
"""

__all__: list[str] = []
