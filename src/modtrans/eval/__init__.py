"""Evaluation: metrics as pure tensor functions (``metrics``), semantic evaluators, reports."""
