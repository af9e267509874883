"""Evaluation of frozen representations: kNN, linear probes, scores, benchmark datasets.

Modules (import what you need; nothing is re-exported):
  knn            weighted cosine kNN (k=20, tau=0.07), chunked and jitted
  linear_probe   linear probes: converged L-BFGS (default), ridge regression, the original's
                 AdamW recipe; classification, multilabel, segmentation, regression
  metrics        accuracy, micro-F1, exact match, confusion matrix, segmentation scores, RMSE
  bootstrap      bootstrap confidence intervals over test predictions
  samples        the EvalSample format shared by the datasets below
  normalization  benchmark normalisation: the pretraining standardiser or dataset stats
  geobench       GeoBench v1 reader (every classification and segmentation task)
  geobench2      GEO-Bench-2 reader (benv2, pastis, treesatai, biomassters) via tacoreader
  synthetic      labelled synthetic sentinel2_l2a-like set, the default when no data is present
  features       features of a model / checkpoint: representation, pooling, ABSENT patches,
                 batched + sharded + jitted once per shape
  finetune       encoder + linear head fine-tuning, freeze/unfreeze, plateau LR, resumable
  tasks          eval task configs (configs/eval/*.py), their datasets, running a mode
  suite          run one task or every task of a suite found under a data root; one table
  hook           InLoopEvaluator: in-loop kNN / probe evaluation during pretraining
  validation     checks of evaluation inputs (finite, consistent), one clear error each
  progress       tqdm progress bars of feature extraction, fine-tuning and probes

The kNN and probe APIs take plain arrays (features (N, D), tokens (N, T, D), labels), which
is what `features.FeatureExtractor` produces.
"""
