"""Training methods: which subnets a step trains (sampling), their losses (losses), the RD-NAS teacher
(teacher) and Cream's prioritized paths (board, matcher, cream)."""
