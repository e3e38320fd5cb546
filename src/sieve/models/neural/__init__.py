"""Neural recommenders on PyTorch (CPU), the optional extra `sieve[neural]`.

- `two_tower.TwoTower`: a retrieval model (user tower over the history and
  the user's attributes, item tower over id, categories and text) trained
  with an in-batch sampled softmax; its item vectors can feed the funnel's
  ANN source.
- `sasrec.SASRec`: a self-attentive next-item model over the user's recent
  items (Kang & McAuley, ICDM 2018), a candidate source for sessions.

PyTorch is imported only when a model trains (and, for SASRec, when it
encodes a sequence it has not seen), so `import sieve` and the other models
never need it. Saved models hold their weights as arrays (no pickle).
"""
