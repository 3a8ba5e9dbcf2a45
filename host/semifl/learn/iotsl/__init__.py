"""IoTSL's generator side (seed 002, Feng et al.): per-device conditional WGAN-GP generators trained
under differential privacy (Algorithm 1), shipped as hashed artifacts, used by the host to pre-train
the split model f = f_a ∘ f_b and to impute non-IID devices' missing classes (Algorithm 2).

The only place semifl imports torch (the `iotsl` extra); the broker and device paths never do.

  gan.py       generator / discriminator (Section V-D) and `generate` (exact class counts)
  dp.py        per-example gradient sanitization and the dp-accounting (epsilon, delta)
  train.py     Algorithm 1, device side: WGAN-GP with the sanitized generator
  artifact.py  a generator as a versioned, SHA-256-checked artifact with its privacy spent
  pretrain.py  host side: the generated set D and theta_pre
  impute.py    Algorithm 2: which generator fills which missing class, and how many
"""
