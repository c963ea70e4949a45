"""The client side: check batches, enqueue them and wait for their results."""
