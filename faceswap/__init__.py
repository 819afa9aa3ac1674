"""The pipeline library, one sub-package per layer (lowest first; imports point down only):

core (config, io, schemas, cache, parallel, images, weights) -> [faceswap_models: the networks]
-> faces (detectors, parsing, 3DMM) -> data (demo corpus, records, loaders) -> artifacts (saved
networks and the swap bundle) -> evaluation -> training -> serving (inference, pyfunc, registry,
watermark, swap CLI). `stages/`, `flows/` and the console script `faceswap.cli` sit on top.
See docs/architecture.md.
"""
