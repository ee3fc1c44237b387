"""xmodal's shipped data, installed as the package `xmodal.data`: the lite model's trained weights
(lite-align.pt, lite-rerank.pt) and the sample photos. Code finds them with `xmodal.indexer.resources`."""
