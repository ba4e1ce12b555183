"""The tiny fixtures: a random-weight SDXL built from config (in the diffusers, single-file and
turbo layouts, with the LDM key conversion the single file needs), a tiny CLIP for the eval's
metrics and a synthetic captioned dataset. The demo, the local run, the tests and the benchmarks
use them so that nothing downloads weights; no pipeline stage imports them."""
