"""Tied autoencoder: model, tf.data input and the training entry point."""
