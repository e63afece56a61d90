"""Evaluation: datasets in their real layouts, preprocessing policies, metrics, the evaluator, benchmarks.

Entry points: `evaluate.evaluator.evaluate`, `evaluate.bench.benchmark`, `evaluate.synthetic.write_synthetic`.
Submodules are imported on use so that importing this package stays cheap.
"""
