"""Ranking architectures: scoring with the supernet (scoring, tree), zero-cost proxies (proxies, proxy_runs,
double_backward), rank metrics (metrics), architecture lists and submissions (submission)."""
