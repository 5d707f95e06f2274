"""The layer below everything: devices, input checks, the one door to
private Keras and TensorFlow attributes, argument checks, tables, timing,
micro-batches, lookups, and moving a user's model into a strategy and back.

No module here imports another tfpar package.
"""
