"""Ranking architectures: a subnet's accuracy with the supernet (evaluate), prefix-shared scoring (trie, tree), scoring a
list (scoring) and its noise (halves), the supernet's health check (health), zero-cost proxies and their ensembles
(proxies, double_backward, proxy_runs, ensemble), rank metrics (metrics) and their bootstrap intervals (intervals),
architecture lists and submissions (submission)."""
