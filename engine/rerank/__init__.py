"""Reranking: the cross-attention fusion model, its scoring and fusion, the backends behind one protocol, BLIP, explanations."""

# How many dual-encoder candidates a search reranks by default (CLI, web, `xmodal bench recall --rerank`). Dev R@1 is
# flat from K = 16; K = 32 adds R@10 (+0.3 to +1.9 over three seeds of each model) for ~3 ms more (the top 32: lite
# 17 ms, base 21 ms; benchmarks/rerank_budget.json). The bundled rerankers' fusion weights are chosen at this K
# (engine.training.rerank.RerankConfig.fuse_k).
DEFAULT_RERANK_K = 32
