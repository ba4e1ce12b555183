"""The train stage: the LoRA trained on the prepared dataset, on one process or data-parallel
over GPUs and nodes, resumable from its newest checkpoint. ``loop`` runs it from a ``config``;
``session`` sets the model up and runs one micro-step from the data order (``batches``), the
cached latents and the step's inputs; ``optim``, ``checkpoints``, ``validation`` samples, the loss
log and the measured speed and memory are its parts. The eval stage reads what it writes."""
