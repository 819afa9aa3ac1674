"""The lowest layer: config, io, schemas, cache, parallel, images, weights, data layout, stage-CLI helpers."""
