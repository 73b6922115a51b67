"""Quality numbers and the one quality gate, shared by export, quantize, auto and validate.

- :mod:`edgeft.metrics.lm`: a causal LM vs a reference: perplexity on fixed token windows, top-1
  agreement and KL on logits, and :func:`~edgeft.metrics.lm.quality_vs_reference` (an export vs its
  fp32 PyTorch model, gated);
- :mod:`edgeft.metrics.text`: task metrics of generated answers: exact match, JSON validity, label
  accuracy, and the greedy scoring loop of finetune evaluation, multitask and validate;
- :mod:`edgeft.metrics.classify`: classifiers: accuracy, macro-F1, per-class F1, top-k, label agreement
  and logit differences;
- :mod:`edgeft.metrics.gate`: one gate for all of them: a metric against a goal (threshold, largest
  worsening, largest worsening in percent) as a :class:`~edgeft.metrics.gate.GateResult`, and the
  :class:`~edgeft.errors.ParityError` a stage raises when its sanity gates fail.

The package sits above :mod:`edgeft.runtime` (it scores anything with ``logits``/``generate``) and below
the exporters, quantize and validate, which use it.
"""
