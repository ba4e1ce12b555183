"""The contract between ZThumb's parts: what the operator, the trainer and the server agree on.

* ``spec``: the LoRAFinetune spec as a pydantic model (the CRD in ``crds/`` mirrors it);
* ``steps``: each pipeline step as a command line with env and paths;
* ``volume_areas``: which area of the shared volume each spec path field may name;
* ``stages``: the one table of the pipeline's stages, in order;
* ``results``: what a step reports back into the status (``status.training``);
* ``gate``: the quality gate (``spec.eval.gate``): which number each threshold bounds, the verdict;
* ``crd``: the CRD's identity (group, version, plural, kind) and the time format of its status;
* ``env``: the environment variable names the parts pass to each other.

Pure pydantic and the standard library: the operator installs it without torch,
diffusers or the server.
"""
