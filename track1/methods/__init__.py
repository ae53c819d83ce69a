"""Training methods: the seam a method plugs into (base), the step (step), which subnets it trains (sampling), the
losses (losses), and the methods a config turns on (registry): RD-NAS (ranking, its teacher), Cream (cream, board,
matcher) and distillation from a frozen full network (distill)."""
