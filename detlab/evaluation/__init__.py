"""COCO evaluation: `coco_evaluator` (CocoEvaluator, a run's validation) and `results_file`
(evaluate_results_file, any framework's results, checked), both scored by `coco_table` (the 12 numbers,
per-class AP, format_table) over `backends` (hotcoco by default, faster-coco-eval, and pycocotools as the
reference that gives the same numbers)."""
