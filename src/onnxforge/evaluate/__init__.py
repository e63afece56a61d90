"""Evaluation: datasets in their real layouts, preprocessing policies, metrics, the evaluator, benchmarks.

Entry points: `evaluate.evaluator.evaluate` (or, to plan once and score many models,
`evaluator.plan_evaluation` + `evaluator.score` with a `ModelRunner` or `PredictionFolder`),
`evaluate.catalog` (registered datasets and metrics), `evaluate.bench.benchmark`,
`evaluate.synthetic.write_synthetic`.
Submodules are imported on use so that importing this package stays cheap.
"""
