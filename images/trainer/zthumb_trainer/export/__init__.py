"""The export stage: a trained checkpoint written as a servable adapter under
``models/lora/<run>/`` (the diffusers and kohya weights and ``adapter.json`` with its provenance),
published whole so the server never reads a half-written one. The train step exports when it ends;
``zthumb-train export`` exports a chosen checkpoint."""
