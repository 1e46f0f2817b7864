"""Image encoders (timm, open_clip), projectors, token pooling and transforms.

Nothing is implemented here yet; see the project's issue tracker.
"""

__all__: list[str] = []
