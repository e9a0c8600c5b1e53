"""tf.Transform preprocessing functions (fit PCA with analyzers)."""
