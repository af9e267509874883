"""Evaluation of frozen representations: kNN, linear probes, scores, benchmark datasets.

Modules (import what you need; nothing is re-exported):
  knn            weighted cosine kNN (spec §9.2), chunked and jitted
  linear_probe   linear probes and the vmapped learning-rate sweep (spec §9.3)
  metrics        accuracy, micro-F1, exact match, confusion matrix, segmentation scores (§9.5)
  bootstrap      bootstrap confidence intervals over test predictions (§9.5)
  samples        the EvalSample format shared by the datasets below
  normalization  benchmark normalisation: pretraining COMPUTED stats or dataset stats (§9.6)
  geobench       GeoBench v1 classification reader and task registry (§9.6, §9.7)
  synthetic      labelled synthetic sentinel2_l2a-like set, the default when no data is present
  features       features of a model / checkpoint: representation, pooling, ABSENT patches,
                 batched + sharded + jitted once per shape (spec §9.1)
  finetune       encoder + linear head fine-tuning, freeze/unfreeze, plateau LR, resumable (§9.4)
  tasks          eval task configs (configs/eval/*.py), their datasets, running a mode
  hook           InLoopEvaluator: in-loop kNN / probe evaluation during pretraining (§10)

The kNN and probe APIs take plain arrays (features (N, D), tokens (N, T, D), labels), which
is what `features.FeatureExtractor` produces.
"""
