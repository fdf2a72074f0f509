"""Storage: the run folder, ``results.sqlite`` (the only module that opens it: ``results``) and
the cached adversarial images' keys and codec."""
