"""Ranking architectures: a subnet's accuracy with the supernet (evaluate), prefix-shared scoring (trie, tree), scoring a
list (scoring), the supernet's health check (health), zero-cost proxies and their ensembles (proxies, double_backward,
proxy_runs, ensemble), rank metrics (metrics), architecture lists and submissions (submission)."""
