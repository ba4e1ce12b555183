"""The eval stage: the deployed adapter judged through the running server. ``run`` generates with
and without it on the same seeds (``images``), adds the CLIP numbers when ``spec.eval.clip`` asks
(``clip``, ``clip_metrics``), applies the quality gate and writes the report (``report``) from a
``config``. It reads what the train stage wrote (its validation samples, its summary); the train
stage never imports it."""
