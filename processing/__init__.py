"""CLIP-ADA image processing, registered for `AutoImageProcessor`.

Example:
    ```python
    >>> from processing import CLIPADAImageProcessor
    >>> processor = CLIPADAImageProcessor(size=224)
    ```
"""

from .image_processing_clipada import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPADAImageProcessor

# save_pretrained then copies image_processing_clipada.py and writes `auto_map` into preprocessor_config.json.
CLIPADAImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["CLIPADAImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]
