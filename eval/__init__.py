"""Per-layer evaluation of a frozen backbone: linear / MLP probes, kNN, low-label.

  from eval.linear_eval import LinearEvalConfig, run_linear_eval
  results = run_linear_eval(LinearEvalConfig(workdir=..., dataset=..., hub_module=<export dir>))

Modules: representation (export or random-init backbone), pooling (end points -> at most 9000
features, patch combining), features (one-pass extraction, disk cache), heads (probes, training,
evaluation), knn, low_label (stratified labelled subsets), results (results.json), linear_eval
(the config and the whole run).
"""
