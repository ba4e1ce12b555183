"""The whole pipeline on one machine (``zthumb-train run --local``): every step the operator runs
as a Job, run here as a local process with the same command line, on a working directory that
plays the shared volume, with the base model served over loopback HTTP (``http_serve``) so that
fetch-model really downloads. ``run`` drives it; the tests reuse ``http_serve``."""
