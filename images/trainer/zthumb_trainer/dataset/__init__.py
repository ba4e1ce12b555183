"""The prepare-dataset stage: a remote ``spec.dataset.source`` fetched into the shared dataset
cache (``sources``, unpacking untrusted archives with bounded memory, bytes and names:
``archives``), then the images validated, normalised and bucketed and the manifest written
(``prepare``). The train and eval stages read the prepared dataset through ``prepare``."""
