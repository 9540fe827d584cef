"""COCO evaluation: `coco_evaluator` (CocoEvaluator, evaluate_results_file, format_table) over `backends`
(faster-coco-eval by default, pycocotools as the reference that gives identical numbers)."""
