"""The base model's trained files for xmodal (base-align.pt: the dual encoder's heads; base-rerank.pt: its
reranker), as package data. xmodal finds them through `xmodal.indexer.resources.data_file`; nothing here is
meant to be imported for its code."""
