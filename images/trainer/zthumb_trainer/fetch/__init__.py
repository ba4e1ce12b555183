"""The fetch-model stage: the base checkpoint and its config files onto the shared volume,
resumable and SHA256-verified, safe with several writers at once (``model``: the step;
``verified``: the verified download the dataset and eval stages reuse for dataset archives and
the eval's CLIP model)."""
